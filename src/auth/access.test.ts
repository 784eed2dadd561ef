import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ACTION_ALL, ACTION_CONTROL, ACTION_READ, ACTION_WRITE } from './action-mask.js'
import { evaluateCaveat, evaluateCaveats, normaliseAccess, type Access } from './access.js'
import type { Caveat } from './caveats.js'

const NOW = 1_800_000_000
const acc = (a: Access) => normaliseAccess(a)
const kind = (c: Caveat, a: Access) => evaluateCaveat(c, acc(a), NOW).kind

test('Organization: unspecified without an org, wrong org denied, actions must be a subset', () => {
  const org: Caveat = { type: 'Organization', id: 'o1', mask: ACTION_READ | ACTION_WRITE }
  assert.equal(kind(org, { action: 'r' }), 'unspecified')
  assert.equal(kind(org, { action: 'r', orgId: 'o1' }), 'allow')
  assert.equal(kind(org, { action: 'rw', orgId: 'o1', appId: 'a' }), 'allow')
  const other = evaluateCaveat(org, acc({ action: 'r', orgId: 'o2' }), NOW)
  assert.deepEqual(other.kind === 'deny' && other.reason, 'wrong_org')
  const control = evaluateCaveat(org, acc({ action: 'C', orgId: 'o1' }), NOW)
  assert.ok(control.kind === 'deny' && control.reason === 'action_not_allowed' && /does not allow C/.test(control.message))
})

test('resource sets: named ids, the "" wildcard, unspecified when the request names none', () => {
  const apps: Caveat = { type: 'Apps', apps: { web: ACTION_ALL, api: ACTION_READ } }
  assert.equal(kind(apps, { action: 'r', orgId: 'o' }), 'unspecified')
  assert.equal(kind(apps, { action: 'wcd', orgId: 'o', appId: 'web' }), 'allow')
  assert.equal(kind(apps, { action: 'r', orgId: 'o', appId: 'api' }), 'allow')
  const write = evaluateCaveat(apps, acc({ action: 'w', orgId: 'o', appId: 'api' }), NOW)
  assert.ok(write.kind === 'deny' && write.reason === 'action_not_allowed')
  const wrong = evaluateCaveat(apps, acc({ action: 'r', orgId: 'o', appId: 'db' }), NOW)
  assert.ok(wrong.kind === 'deny' && wrong.reason === 'wrong_app' && /limited to api, web/.test(wrong.message))

  const everyApp: Caveat = { type: 'Apps', apps: { '': ACTION_READ } }
  assert.equal(kind(everyApp, { action: 'r', orgId: 'o', appId: 'anything' }), 'allow')
  assert.equal(kind(everyApp, { action: 'w', orgId: 'o', appId: 'anything' }), 'deny')

  const machines: Caveat = { type: 'Machines', machines: { m1: ACTION_CONTROL | ACTION_READ } }
  assert.equal(kind(machines, { action: 'C', orgId: 'o', appId: 'web', machineId: 'm1' }), 'allow')
  assert.equal(kind(machines, { action: 'C', orgId: 'o', appId: 'web', machineId: 'm2' }), 'deny')
  assert.equal(kind(machines, { action: 'r', orgId: 'o', appId: 'web' }), 'unspecified')

  const volumes: Caveat = { type: 'Volumes', volumes: { vol_1: ACTION_READ } }
  assert.equal(kind(volumes, { action: 'r', orgId: 'o', appId: 'web', volumeId: 'vol_1' }), 'allow')
  const wrongVolume = evaluateCaveat(volumes, acc({ action: 'r', orgId: 'o', appId: 'web', volumeId: 'vol_2' }), NOW)
  assert.ok(wrongVolume.kind === 'deny' && wrongVolume.reason === 'wrong_volume')
})

test('ValidityWindow is inclusive and always relevant', () => {
  const w: Caveat = { type: 'ValidityWindow', notBefore: NOW - 10, notAfter: NOW + 10 }
  assert.equal(evaluateCaveat(w, acc({ action: 'r' }), NOW + 10).kind, 'allow')
  assert.equal(evaluateCaveat(w, acc({ action: 'r' }), NOW + 11).kind, 'expired')
  assert.equal(evaluateCaveat(w, acc({ action: 'r' }), NOW - 11).kind, 'not_yet_valid')
})

test('Mutations and Commands are unspecified unless the request names one', () => {
  const muts: Caveat = { type: 'Mutations', mutations: ['setSecrets'] }
  assert.equal(kind(muts, { action: 'w' }), 'unspecified')
  assert.equal(kind(muts, { action: 'w', mutation: 'setSecrets' }), 'allow')
  assert.equal(kind(muts, { action: 'w', mutation: 'deleteApp' }), 'deny')

  const cmds: Caveat = { type: 'Commands', commands: [{ args: ['uptime'], exact: true }, { args: ['ls', '-l'], exact: false }] }
  assert.equal(kind(cmds, { action: 'C' }), 'unspecified')
  assert.equal(kind(cmds, { action: 'C', command: ['uptime'] }), 'allow')
  assert.equal(kind(cmds, { action: 'C', command: ['uptime', '-p'] }), 'deny', 'exact means exact')
  assert.equal(kind(cmds, { action: 'C', command: ['ls', '-l', '/tmp'] }), 'allow', 'a prefix allows more arguments')
  assert.equal(kind(cmds, { action: 'C', command: ['ls'] }), 'deny')
  assert.equal(kind({ type: 'Commands', commands: [{ args: [], exact: false }] }, { action: 'C', command: ['anything'] }), 'allow')
})

test('IfPresent: relevant ifs must all allow; when none is relevant only the else actions pass', () => {
  const deployLike: Caveat = { type: 'IfPresent', ifs: [{ type: 'Apps', apps: { web: ACTION_ALL } }], else: ACTION_READ }
  // No app named: the Apps caveat is unspecified → else branch (read only).
  assert.equal(kind(deployLike, { action: 'r', orgId: 'o' }), 'allow')
  assert.equal(kind(deployLike, { action: 'c', orgId: 'o' }), 'deny')
  // The app is named: the ifs decide, the else mask plays no part.
  assert.equal(kind(deployLike, { action: 'wcdC', orgId: 'o', appId: 'web' }), 'allow')
  const other = evaluateCaveat(deployLike, acc({ action: 'r', orgId: 'o', appId: 'api' }), NOW)
  assert.ok(other.kind === 'deny' && other.reason === 'wrong_app', 'a named app outside the set is denied even for reads')

  // Two ifs: if ANY is relevant, ALL relevant ones must allow; unspecified ones are skipped.
  const two: Caveat = { type: 'IfPresent', ifs: [{ type: 'Apps', apps: { web: ACTION_ALL } }, { type: 'Machines', machines: { m1: ACTION_READ } }], else: 0 }
  assert.equal(kind(two, { action: 'w', orgId: 'o', appId: 'web' }), 'allow', 'machine unspecified, app allows')
  assert.equal(kind(two, { action: 'w', orgId: 'o', appId: 'web', machineId: 'm1' }), 'deny', 'machine relevant and read-only')
  assert.equal(kind(two, { action: 'r', orgId: 'o', appId: 'web', machineId: 'm1' }), 'allow')
  assert.equal(kind(two, { action: 'r', orgId: 'o' }), 'deny', 'nothing relevant and else allows nothing')

  // Nested IfPresent works the same way.
  const nested: Caveat = { type: 'IfPresent', ifs: [deployLike], else: 0 }
  assert.equal(kind(nested, { action: 'r', orgId: 'o' }), 'allow', 'inner IfPresent is always relevant (it answers allow via else)')
})

test('a top-level unspecified caveat is a denial; wrong org decides the reason', () => {
  const caveats: Caveat[] = [{ type: 'Apps', apps: { web: ACTION_ALL } }, { type: 'Organization', id: 'o1', mask: ACTION_ALL }]
  const listApps = evaluateCaveats(caveats, acc({ action: 'r', orgId: 'o1' }), NOW)
  assert.ok(listApps.kind === 'deny' && listApps.reason === 'resource_unspecified')
  const otherOrg = evaluateCaveats(caveats, acc({ action: 'r', orgId: 'o2', appId: 'x' }), NOW)
  assert.ok(otherOrg.kind === 'deny' && otherOrg.reason === 'wrong_org', 'wrong org wins over wrong app whatever the caveat order')
  assert.equal(evaluateCaveats([], acc({ action: '*' }), NOW).kind, 'allow', 'no caveats: all powerful (never minted by Hangar)')
})

test('an Access naming a machine without its app is a programming error (500)', () => {
  assert.throws(() => normaliseAccess({ action: 'r', orgId: 'o', machineId: 'm' }), (err: Error & { httpStatus?: number }) => err.httpStatus === 500)
  assert.throws(() => normaliseAccess({ action: '', orgId: 'o' }), (err: Error & { httpStatus?: number }) => err.httpStatus === 500)
})
