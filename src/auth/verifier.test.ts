import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ACTION_ALL, ACTION_READ } from './action-mask.js'
import { randomKey } from './aead.js'
import { type Access } from './access.js'
import { formatAuthorizationHeader, parseAuthorizationHeader } from './authorization-header.js'
import { caveatFromJSON, caveatToJSON, type Caveat } from './caveats.js'
import { AccessDeniedError, TokenRejectedError } from './errors.js'
import { InMemoryKeyStore } from './key-store.js'
import { addThirdPartyCaveat, attenuate, decodeToken, mintDischarge, openTicket, thirdPartyTickets, tokenId } from './macaroon.js'
import { InMemoryRevocationList } from './revocation-list.js'
import { mintToken, scopeCaveats } from './token-kinds.js'
import { TokenVerifier, authorize, verifyTokens } from './verifier.js'

const NOW = Date.UTC(2026, 2, 1, 9, 0, 0)

function world() {
  const keys = new InMemoryKeyStore()
  const revocations = new InMemoryRevocationList()
  const keyA = keys.createKey('org-a', NOW)
  const keyB = keys.createKey('org-b', NOW)
  let now = NOW
  const verifier = new TokenVerifier({ keys, revocations, now: () => now })
  return { keys, revocations, keyA, keyB, verifier, setNow: (ms: number) => { now = ms } }
}

async function outcome(verifier: TokenVerifier, header: string, access: Access): Promise<'allow' | number> {
  try {
    await verifier.authorizeHeader(header, access)
    return 'allow'
  } catch (err) {
    if (err instanceof TokenRejectedError || err instanceof AccessDeniedError) return err.httpStatus
    throw err
  }
}

// ---------------------------------------------------------------- header

test('the header parser takes FlyV1 and Bearer, comma-joined tokens, and refuses the rest', () => {
  assert.deepEqual(parseAuthorizationHeader('FlyV1 fm2_a,fm2_b'), ['fm2_a', 'fm2_b'])
  assert.deepEqual(parseAuthorizationHeader('Bearer fm2_a'), ['fm2_a'])
  assert.deepEqual(parseAuthorizationHeader('flyv1  fm2_a , fm2_b ,'), ['fm2_a', 'fm2_b'])
  assert.equal(formatAuthorizationHeader(['fm2_a', 'fm2_b']), 'FlyV1 fm2_a,fm2_b')
  const reason = (v: string | undefined) => { try { parseAuthorizationHeader(v); return 'ok' } catch (e) { return (e as TokenRejectedError).reason } }
  assert.equal(reason(undefined), 'missing')
  assert.equal(reason(''), 'missing')
  assert.equal(reason('Bearer '), 'missing')
  assert.equal(reason('Bearer'), 'malformed')
  assert.equal(reason('FlyV1 ,'), 'missing')
  assert.equal(reason('Basic dXNlcjpwYXNz'), 'malformed')
  assert.equal(reason('Bearer abc'), 'wrong_prefix')
  assert.equal(reason('FlyV1 fm2_a,fo1_b'), 'wrong_prefix')
  assert.equal(reason('FlyV1 ' + Array.from({ length: 17 }, () => 'fm2_a').join(',')), 'malformed')
})

// ---------------------------------------------------------------- token kinds

test('token kinds: org, readonly, deploy and machine-exec allow what their names say', async () => {
  const { keyA, verifier } = world()
  const header = (kind: Parameters<typeof mintToken>[0]['kind'], extra: object = {}) =>
    formatAuthorizationHeader([mintToken({ kind, key: keyA, nowMs: NOW, ...extra }).token])

  const org = header('org')
  assert.equal(await outcome(verifier, org, { action: 'c', orgId: 'org-a' }), 'allow')
  assert.equal(await outcome(verifier, org, { action: 'wcdC', orgId: 'org-a', appId: 'any', machineId: 'm' }), 'allow')

  const readonly = header('readonly')
  assert.equal(await outcome(verifier, readonly, { action: 'r', orgId: 'org-a', appId: 'web' }), 'allow')
  assert.equal(await outcome(verifier, readonly, { action: 'w', orgId: 'org-a', appId: 'web' }), 403)
  assert.equal(await outcome(verifier, readonly, { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm' }), 403)

  const deploy = header('deploy', { appId: 'web' })
  assert.equal(await outcome(verifier, deploy, { action: '*', orgId: 'org-a', appId: 'web', machineId: 'm' }), 'allow')
  assert.equal(await outcome(verifier, deploy, { action: 'r', orgId: 'org-a' }), 'allow', 'reads org-level things (regions, app list)')
  assert.equal(await outcome(verifier, deploy, { action: 'c', orgId: 'org-a' }), 403, 'cannot create apps')
  assert.equal(await outcome(verifier, deploy, { action: 'r', orgId: 'org-a', appId: 'api' }), 403, 'cannot touch another app')

  const exec = header('machine-exec', { appId: 'web', commands: [['uptime']] })
  assert.equal(await outcome(verifier, exec, { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm', command: ['uptime'] }), 'allow')
  assert.equal(await outcome(verifier, exec, { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm', command: ['rm', '-rf', '/'] }), 403)
  assert.equal(await outcome(verifier, exec, { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm' }), 403, 'no stop/start')
  assert.equal(await outcome(verifier, exec, { action: 'r', orgId: 'org-a', appId: 'web', machineId: 'm' }), 'allow')
  assert.equal(await outcome(verifier, exec, { action: 'C', orgId: 'org-a', appId: 'api', machineId: 'm', command: ['uptime'] }), 403)

  const execOne = header('machine-exec', { appId: 'web', machineId: 'm1' })
  assert.equal(await outcome(verifier, execOne, { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm1', command: ['sh'] }), 'allow')
  assert.equal(await outcome(verifier, execOne, { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm2', command: ['sh'] }), 403)

  assert.throws(() => mintToken({ kind: 'deploy', key: keyA }), /give --app/)
})

test('one org\'s token never reaches another org: 403 that the API conceals as 404', async () => {
  const { keyA, verifier } = world()
  const org = formatAuthorizationHeader([mintToken({ kind: 'org', key: keyA, nowMs: NOW }).token])
  await assert.rejects(verifier.authorizeHeader(org, { action: 'r', orgId: 'org-b', appId: 'their-app' }), (err: unknown) => {
    assert.ok(err instanceof AccessDeniedError)
    assert.equal(err.reason, 'wrong_org')
    assert.equal(err.concealAsNotFound, true)
    return true
  })
  const deploy = formatAuthorizationHeader([mintToken({ kind: 'deploy', key: keyA, appId: 'web', nowMs: NOW }).token])
  await assert.rejects(verifier.authorizeHeader(deploy, { action: 'r', orgId: 'org-a', appId: 'api' }), (err: unknown) => err instanceof AccessDeniedError && !err.concealAsNotFound && err.reason === 'wrong_app')
})

test('a token claiming another org in its caveats is still bound to its key\'s org', async () => {
  const { keyA, verifier } = world()
  // Org A's key signs a token whose caveat names org B (only a server bug could do this).
  const { mintMacaroon, encodeToken } = await import('./macaroon.js')
  const token = encodeToken(mintMacaroon({ kid: Buffer.from(keyA.kid, 'hex'), key: keyA.secret, caveats: [{ type: 'Organization', id: 'org-b', mask: ACTION_ALL }] }))
  assert.equal(await outcome(verifier, `FlyV1 ${token}`, { action: 'r', orgId: 'org-b' }), 403)
})

// ---------------------------------------------------------------- several tokens

test('several tokens in one header: the request is allowed if ANY of them allows it', async () => {
  const { keyA, keyB, verifier } = world()
  const tokenA = mintToken({ kind: 'readonly', key: keyA, nowMs: NOW }).token
  const tokenB = mintToken({ kind: 'org', key: keyB, nowMs: NOW }).token
  const both = formatAuthorizationHeader([tokenA, tokenB])
  assert.equal(await outcome(verifier, both, { action: 'r', orgId: 'org-a', appId: 'x' }), 'allow')
  assert.equal(await outcome(verifier, both, { action: 'w', orgId: 'org-b', appId: 'y' }), 'allow')
  await assert.rejects(verifier.authorizeHeader(both, { action: 'w', orgId: 'org-a', appId: 'x' }), (err: unknown) => {
    assert.ok(err instanceof AccessDeniedError)
    assert.deepEqual([...err.reasons].sort(), ['action_not_allowed', 'wrong_org'])
    assert.equal(err.concealAsNotFound, false, 'org A exists for token 1, so no concealment')
    assert.match(err.message, /token 1: .*token 2: /)
    return true
  })
  // A bad token beside a good one does not spoil the good one.
  const withJunk = formatAuthorizationHeader([tokenA.slice(0, 30), tokenB])
  assert.equal(await outcome(verifier, withJunk, { action: 'w', orgId: 'org-b' }), 'allow')
  // All bad: 401, each reason listed.
  await assert.rejects(verifier.verifyHeader(formatAuthorizationHeader([tokenA.slice(0, 30), 'fm2_!!'])), (err: unknown) => err instanceof TokenRejectedError && err.reasons.length === 2)
})

// ---------------------------------------------------------------- attenuation

const ACCESSES: Access[] = [
  { action: 'r', orgId: 'org-a' },
  { action: 'c', orgId: 'org-a' },
  { action: 'r', orgId: 'org-a', appId: 'web' },
  { action: 'w', orgId: 'org-a', appId: 'web' },
  { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm1' },
  { action: 'r', orgId: 'org-a', appId: 'web', machineId: 'm1' },
  { action: 'r', orgId: 'org-a', appId: 'web', machineId: 'm2' },
  { action: 'd', orgId: 'org-a', appId: 'api' },
  { action: 'r', orgId: 'org-a', appId: 'web', volumeId: 'vol_1' },
  { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm1', command: ['ls'] },
  { action: '*', orgId: 'org-b', appId: 'web' },
]

const NARROWINGS: Caveat[][] = [
  scopeCaveats({ appId: 'web', machineId: 'm1', actions: 'r', expiry: '1h', nowMs: NOW }),
  scopeCaveats({ appId: 'web', nowMs: NOW }),
  scopeCaveats({ actions: 'r' }),
  scopeCaveats({ actions: 'rC', machineId: 'm1' }),
  // Attempts to widen: granting more than the token has can never add anything.
  [{ type: 'Organization', id: 'org-a', mask: ACTION_ALL }],
  [{ type: 'Apps', apps: { '': ACTION_ALL } }],
  [{ type: 'IfPresent', ifs: [{ type: 'Apps', apps: { api: ACTION_ALL } }], else: ACTION_ALL }],
  [{ type: 'Organization', id: 'org-b', mask: ACTION_ALL }],
]

test('attenuation narrows and never widens: every access allowed after is allowed before', async () => {
  const { keyA, verifier } = world()
  for (const kind of ['readonly', 'org', 'deploy', 'machine-exec'] as const) {
    const base = mintToken({ kind, key: keyA, appId: 'web', nowMs: NOW }).token
    for (const narrowing of NARROWINGS) {
      const narrower = attenuate(base, narrowing)
      for (const access of ACCESSES) {
        const before = await outcome(verifier, `FlyV1 ${base}`, access)
        const after = await outcome(verifier, `FlyV1 ${narrower}`, access)
        if (after === 'allow') assert.equal(before, 'allow', `${kind} + ${JSON.stringify(narrowing.map(caveatToJSON))} widened ${JSON.stringify(access)}`)
      }
    }
  }
})

test('the CLI helper narrows an org token to one app, one Machine, read-only, for an hour', async () => {
  const { keyA, verifier, setNow } = world()
  const base = mintToken({ kind: 'org', key: keyA, nowMs: NOW }).token
  const caveats = scopeCaveats({ appId: 'web', machineId: 'm1', actions: 'r', expiry: '1h', nowMs: NOW })
  assert.deepEqual(caveats.map(caveatToJSON), [
    { type: 'Apps', body: { apps: { web: 'r' } } },
    { type: 'Machines', body: { machines: { m1: 'r' } } },
    { type: 'ValidityWindow', body: { not_before: NOW / 1000, not_after: NOW / 1000 + 3600 } },
  ])
  const narrow = `FlyV1 ${attenuate(base, caveats)}`
  assert.equal(await outcome(verifier, narrow, { action: 'r', orgId: 'org-a', appId: 'web', machineId: 'm1' }), 'allow')
  assert.equal(await outcome(verifier, narrow, { action: 'C', orgId: 'org-a', appId: 'web', machineId: 'm1' }), 403)
  assert.equal(await outcome(verifier, narrow, { action: 'r', orgId: 'org-a', appId: 'web', machineId: 'm2' }), 403)
  assert.equal(await outcome(verifier, narrow, { action: 'r', orgId: 'org-a', appId: 'api' }), 403)
  setNow(NOW + 3601_000)
  assert.equal(await outcome(verifier, narrow, { action: 'r', orgId: 'org-a', appId: 'web', machineId: 'm1' }), 401)
  assert.throws(() => scopeCaveats({}), /nothing to narrow/)
})

test('caveats in JSON form (tokens attenuate -f) read back to the same caveats', () => {
  const caveats: Caveat[] = [
    { type: 'Organization', id: 'org-a', mask: ACTION_READ },
    { type: 'IfPresent', ifs: [{ type: 'Apps', apps: { web: ACTION_ALL } }, { type: 'Machines', machines: { m1: ACTION_READ } }], else: ACTION_READ },
    { type: 'Mutations', mutations: ['a', 'b'] },
    { type: 'Commands', commands: [{ args: ['ls', '-l'], exact: false }] },
    { type: 'Action', mask: ACTION_READ },
  ]
  for (const c of caveats) assert.deepEqual(caveatFromJSON(JSON.parse(JSON.stringify(caveatToJSON(c)))), c)
  assert.throws(() => caveatFromJSON({ type: 'FeatureSet', body: {} }), /not one Hangar can add/)
  assert.throws(() => caveatFromJSON({ type: 'Apps', body: { apps: { web: 'rx' } } }), /"x" is not an action/)
})

// ---------------------------------------------------------------- third parties

test('3P caveat: refused without a discharge, allowed with a valid one, refused with a forged one', async () => {
  const { keyA, verifier, setNow } = world()
  const authKey = randomKey()
  const base = mintToken({ kind: 'org', key: keyA, nowMs: NOW }).token
  const token = addThirdPartyCaveat(base, { location: 'https://auth.example', thirdPartyKey: authKey, caveats: [{ type: 'Action', mask: ACTION_READ }] })
  const access: Access = { action: 'r', orgId: 'org-a', appId: 'web' }

  await assert.rejects(verifier.authorizeHeader(`FlyV1 ${token}`, access), (err: unknown) => {
    assert.ok(err instanceof TokenRejectedError)
    assert.equal(err.reason, 'missing_discharge')
    assert.match(err.message, /discharge token from https:\/\/auth\.example/)
    return true
  })

  // The third party opens the ticket, learns r and the caveats it was asked to check, and mints a
  // discharge valid for five minutes.
  const [{ location, ticket }] = thirdPartyTickets(token) as [{ location: string; ticket: Buffer }]
  assert.equal(location, 'https://auth.example')
  const opened = openTicket(authKey, ticket)
  assert.deepEqual(opened.caveats, [{ type: 'Action', mask: ACTION_READ }])
  const nowSeconds = Math.floor(NOW / 1000)
  const discharge = mintDischarge({ ticket, dischargeKey: opened.dischargeKey, location, caveats: [{ type: 'ValidityWindow', notBefore: nowSeconds, notAfter: nowSeconds + 300 }] })
  assert.equal(decodeToken(discharge).nonce.kid.equals(ticket), true, 'the discharge nonce is the ticket (CID)')

  const header = formatAuthorizationHeader([discharge, token])
  assert.equal(await outcome(verifier, header, access), 'allow', 'discharge first or last: order does not matter')
  const verified = await verifier.verifyHeader(header)
  assert.equal(verified[0]!.dischargeCount, 1)
  // The discharge's own caveats are enforced: after five minutes the pair is expired.
  setNow(NOW + 301_000)
  await assert.rejects(verifier.authorizeHeader(header, access), (err: unknown) => err instanceof TokenRejectedError && err.reason === 'expired')
  setNow(NOW)

  // A discharge signed with a guessed key, or for another ticket, does not count.
  const forged = mintDischarge({ ticket, dischargeKey: randomKey(), location })
  await assert.rejects(verifier.authorizeHeader(formatAuthorizationHeader([token, forged]), access), (err: unknown) => err instanceof TokenRejectedError && err.reason === 'bad_discharge')
  const otherTicket = mintDischarge({ ticket: Buffer.alloc(60, 1), dischargeKey: opened.dischargeKey, location })
  await assert.rejects(verifier.authorizeHeader(formatAuthorizationHeader([token, otherTicket]), access), (err: unknown) => err instanceof TokenRejectedError && err.reason === 'missing_discharge')

  // The ticket opens only with the third party's key.
  assert.throws(() => openTicket(randomKey(), ticket), /does not open/)
  // A discharge alone is not a permission token.
  await assert.rejects(verifier.verifyHeader(`FlyV1 ${discharge}`), (err: unknown) => err instanceof TokenRejectedError && err.reason === 'missing')
})

test('3P caveat added after attenuation still binds to the chain (VID sealed under that tail)', async () => {
  const { keyA, keys } = world()
  const authKey = randomKey()
  const base = attenuate(mintToken({ kind: 'org', key: keyA, nowMs: NOW }).token, [{ type: 'Apps', apps: { web: ACTION_ALL } }])
  const token = attenuate(addThirdPartyCaveat(base, { location: 'https://sso.example', thirdPartyKey: authKey }), [{ type: 'Action', mask: ACTION_READ }])
  const [{ ticket, location }] = thirdPartyTickets(token) as [{ location: string; ticket: Buffer }]
  const { dischargeKey } = openTicket(authKey, ticket)
  const discharge = mintDischarge({ ticket, dischargeKey, location })
  const verified = await verifyTokens([token, discharge], { keys })
  assert.equal(authorize(verified, { action: 'r', orgId: 'org-a', appId: 'web' }, NOW).orgId, 'org-a')
  assert.throws(() => authorize(verified, { action: 'w', orgId: 'org-a', appId: 'web' }, NOW), AccessDeniedError)
  assert.throws(() => addThirdPartyCaveat(token, { location: 'https://sso.example', thirdPartyKey: authKey }), /already has a third-party caveat/)
})

// ---------------------------------------------------------------- revocation and keys

test('revoking a token id refuses it and every token attenuated from it', async () => {
  const { keyA, verifier, revocations } = world()
  const minted = mintToken({ kind: 'org', key: keyA, nowMs: NOW })
  const child = attenuate(minted.token, [{ type: 'Action', mask: ACTION_READ }])
  assert.equal(tokenId(child), minted.tokenId)
  revocations.revoke(minted.tokenId, NOW)
  for (const t of [minted.token, child]) {
    await assert.rejects(verifier.verifyHeader(`FlyV1 ${t}`), (err: unknown) => err instanceof TokenRejectedError && err.reason === 'revoked' && err.httpStatus === 401)
  }
  const other = mintToken({ kind: 'org', key: keyA, nowMs: NOW })
  assert.equal(await outcome(verifier, `FlyV1 ${other.token}`, { action: 'r', orgId: 'org-a' }), 'allow', 'other tokens are untouched')
})

test('deleting a signing key invalidates its tokens; a newer key signs new ones', async () => {
  const { keys, keyA, verifier } = world()
  const old = mintToken({ kind: 'org', key: keyA, nowMs: NOW }).token
  const newer = keys.createKey('org-a', NOW + 1000)
  assert.equal(keys.currentKey('org-a')!.kid, newer.kid)
  const fresh = mintToken({ kind: 'org', key: keys.currentKey('org-a')!, nowMs: NOW }).token
  assert.equal(await outcome(verifier, `FlyV1 ${old}`, { action: 'r', orgId: 'org-a' }), 'allow', 'old keys verify until deleted')
  keys.deleteKey(keyA.kid)
  assert.equal(await outcome(verifier, `FlyV1 ${old}`, { action: 'r', orgId: 'org-a' }), 401)
  assert.equal(await outcome(verifier, `FlyV1 ${fresh}`, { action: 'r', orgId: 'org-a' }), 'allow')
})

test('a minted token carries the 20-year default expiry', () => {
  const { keyA } = world()
  const minted = mintToken({ kind: 'readonly', key: keyA, nowMs: NOW })
  assert.equal(new Date(minted.expiresAt).getUTCFullYear(), 2046)
  assert.equal(mintToken({ kind: 'readonly', key: keyA, nowMs: NOW, expiry: '24h' }).expiresAt, '2026-03-02T09:00:00.000Z')
})
