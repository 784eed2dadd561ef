import { test } from 'node:test'
import assert from 'node:assert/strict'
import { decideAutostop, type AutostopMachine, type AutostopGroup } from './autostop.js'

function m(machineId: string, region: string, load = 0, running = true, lastActiveAt = 0): AutostopMachine {
  return { machineId, region, load, running, softLimit: 5, lastActiveAt }
}
function group(machines: AutostopMachine[], overrides: Partial<AutostopGroup> = {}): AutostopGroup {
  return { autostop: 'stop', minMachinesRunning: 0, primaryRegion: 'ams', machines, ...overrides }
}

test('autostop off never stops anything', () => {
  assert.deepEqual(decideAutostop(group([m('a', 'ams'), m('b', 'ams')], { autostop: 'off' })), [])
})

test('at most one Machine per region per pass, and suspend when autostop is suspend', () => {
  const machines = [m('a', 'ams'), m('b', 'ams'), m('c', 'ams'), m('d', 'sin'), m('e', 'sin')]
  assert.deepEqual(decideAutostop(group(machines)), [
    { machineId: 'a', region: 'ams', action: 'stop' },
    { machineId: 'd', region: 'sin', action: 'stop' },
  ])
  assert.deepEqual(decideAutostop(group(machines, { autostop: 'suspend' })).map((a) => a.action), ['suspend', 'suspend'])
})

test('excess = running − (over_soft + 1): stop one only when excess ≥ 1', () => {
  // 2 running, 1 over soft → excess 0.
  assert.deepEqual(decideAutostop(group([m('a', 'ams', 5), m('b', 'ams', 1)])), [])
  // 3 running, 1 over soft → excess 1; the least loaded goes.
  assert.deepEqual(decideAutostop(group([m('a', 'ams', 5), m('b', 'ams', 1), m('c', 'ams', 2)])), [{ machineId: 'b', region: 'ams', action: 'stop' }])
  // 3 running, 2 over soft → excess 0.
  assert.deepEqual(decideAutostop(group([m('a', 'ams', 5), m('b', 'ams', 9), m('c', 'ams', 2)])), [])
  // Over soft counts at soft exactly.
  assert.deepEqual(decideAutostop(group([m('a', 'ams', 5), m('b', 'ams', 4)])), [])
})

test("a region's only Machine stops only at zero load", () => {
  assert.deepEqual(decideAutostop(group([m('a', 'sin', 1)])), [])
  assert.deepEqual(decideAutostop(group([m('a', 'sin', 0)])), [{ machineId: 'a', region: 'sin', action: 'stop' }])
})

test('min_machines_running holds only in the primary region', () => {
  const machines = [m('a', 'ams'), m('b', 'ams'), m('c', 'sin')]
  assert.deepEqual(decideAutostop(group(machines, { minMachinesRunning: 2 })), [{ machineId: 'c', region: 'sin', action: 'stop' }])
  assert.deepEqual(decideAutostop(group(machines, { minMachinesRunning: 1 })).map((a) => a.machineId), ['a', 'c'])
  assert.deepEqual(decideAutostop(group([m('a', 'ams')], { minMachinesRunning: 1 })), [])
})

test('stopped Machines do not count as running; the longest idle goes first among equals', () => {
  assert.deepEqual(decideAutostop(group([m('a', 'ams', 0, false), m('b', 'ams', 2)])), [])
  assert.deepEqual(decideAutostop(group([m('a', 'ams', 0, true, 50), m('b', 'ams', 0, true, 10)])).map((a) => a.machineId), ['b'])
})

test('passes repeated until nothing changes scale down to the floor, one per region per pass', () => {
  const machines = [m('a', 'ams'), m('b', 'ams'), m('c', 'ams'), m('d', 'sin'), m('e', 'sin')]
  const passes: string[][] = []
  for (;;) {
    const actions = decideAutostop(group(machines, { minMachinesRunning: 1 }))
    if (actions.length === 0) break
    passes.push(actions.map((a) => a.machineId))
    for (const action of actions) machines.find((x) => x.machineId === action.machineId)!.running = false
  }
  assert.deepEqual(passes, [['a', 'd'], ['b', 'e']])
  assert.deepEqual(machines.filter((x) => x.running).map((x) => x.machineId), ['c'])
})

test('exhaustive over loads 0..6 for two Machines in one region', () => {
  for (let a = 0; a <= 6; a++) for (let b = 0; b <= 6; b++) {
    const actions = decideAutostop(group([m('a', 'sin', a), m('b', 'sin', b)]))
    const overSoft = [a, b].filter((load) => load >= 5).length
    assert.equal(actions.length, 2 - (overSoft + 1) >= 1 ? 1 : 0, `loads ${a},${b}`)
  }
})
