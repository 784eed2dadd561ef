import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ALL_STATES, PERSISTENT_STATES, TERMINAL_STATES, isIllegalState } from '../core/index.js'
import { ACTION_ACCEPTS, TRANSITIONS, assertActionAllowed, canTransition, isSettled } from './transition-table.js'

test('the transition table names every state and only known states', () => {
  assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...ALL_STATES].sort())
  for (const [from, targets] of Object.entries(TRANSITIONS)) {
    for (const to of targets) assert.ok(ALL_STATES.includes(to), `${from} → ${to}`)
  }
})

test('terminal states lead nowhere; every other state can reach destroyed', () => {
  for (const state of TERMINAL_STATES) assert.deepEqual(TRANSITIONS[state], [])
  const reachesDestroyed = (from: string, seen = new Set<string>()): boolean => {
    if (from === 'destroyed') return true
    if (seen.has(from)) return false
    seen.add(from)
    return TRANSITIONS[from as keyof typeof TRANSITIONS].some((to) => reachesDestroyed(to, seen))
  }
  for (const state of ALL_STATES) {
    if (state === 'replaced' || state === 'migrated') continue
    assert.ok(reachesDestroyed(state), `${state} cannot reach destroyed`)
  }
})

test('every persistent state is reachable from creating', () => {
  const reached = new Set<string>(['creating'])
  const queue = ['creating']
  while (queue.length) for (const to of TRANSITIONS[queue.shift() as keyof typeof TRANSITIONS]) if (!reached.has(to)) { reached.add(to); queue.push(to) }
  for (const state of PERSISTENT_STATES) assert.ok(reached.has(state), state)
})

test('actions are accepted only from their states, and refusals name the current state', () => {
  for (const [action, accepted] of Object.entries(ACTION_ACCEPTS)) {
    for (const state of ALL_STATES) {
      const allowed = accepted.includes(state)
      try {
        assertActionAllowed(action as keyof typeof ACTION_ACCEPTS, state)
        assert.ok(allowed, `${action} from ${state} should be refused`)
      } catch (err) {
        assert.ok(!allowed, `${action} from ${state} should be allowed`)
        assert.ok(isIllegalState(err))
        assert.equal(err.currentState, state)
        assert.ok(err.message.endsWith(`: ${state}`))
        assert.equal(err.httpStatus, 412)
      }
    }
  }
  assert.ok(canTransition('started', 'stopping'))
  assert.ok(!canTransition('destroyed', 'starting'))
  assert.ok(isSettled('stopped') && !isSettled('stopping'))
})
