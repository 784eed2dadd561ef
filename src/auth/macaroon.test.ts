import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ACTION_ALL, ACTION_READ } from './action-mask.js'
import { packCaveat, type Caveat } from './caveats.js'
import { TokenRejectedError, type TokenRejectionReason } from './errors.js'
import { InMemoryKeyStore } from './key-store.js'
import { attenuate, decodeToken, describeToken, encodeToken, hasValidSignature, mintMacaroon, tokenId, TOKEN_PREFIX, type Macaroon } from './macaroon.js'
import { pack } from './msgpack-frames.js'
import { authorize, verifyTokens } from './verifier.js'

const NOW = Date.UTC(2026, 0, 15, 12, 0, 0)
const nowSeconds = Math.floor(NOW / 1000)

function setup() {
  const keys = new InMemoryKeyStore()
  const keyA = keys.createKey('org-a', NOW)
  const keyB = keys.createKey('org-b', NOW)
  const caveats: Caveat[] = [
    { type: 'Organization', id: 'org-a', mask: ACTION_ALL },
    { type: 'Apps', apps: { web: ACTION_ALL } },
    { type: 'ValidityWindow', notBefore: nowSeconds - 60, notAfter: nowSeconds + 3600 },
  ]
  const macaroon = mintMacaroon({ kid: Buffer.from(keyA.kid, 'hex'), key: keyA.secret, caveats })
  return { keys, keyA, keyB, macaroon, token: encodeToken(macaroon) }
}

test('a token is fm2_ + base64 of MessagePack [nonce, location, caveats, tail] and round-trips', () => {
  const { token, macaroon, keyA } = setup()
  assert.ok(token.startsWith(TOKEN_PREFIX))
  const raw = Buffer.from(token.slice(4), 'base64')
  assert.equal(raw[0], 0x94, 'a 4-element array')
  const decoded = decodeToken(token)
  assert.equal(decoded.location, 'hangar:permission')
  assert.equal(decoded.nonce.kid.toString('hex'), keyA.kid)
  assert.equal(decoded.nonce.proof, false)
  assert.deepEqual(decoded.caveats.map((c) => c.caveat), macaroon.caveats.map((c) => c.caveat))
  assert.equal(encodeToken(decoded), token, 're-encoding keeps the exact bytes')
  assert.ok(hasValidSignature(keyA.secret, decoded))
})

test('the chain is T0 = HMAC(key, nonce), Ti = HMAC(Ti-1, caveat_i)', async () => {
  const { createHmac } = await import('node:crypto')
  const { macaroon, keyA } = setup()
  let tag = createHmac('sha256', keyA.secret).update(macaroon.nonceBytes).digest()
  for (const c of macaroon.caveats) tag = createHmac('sha256', tag).update(c.packed).digest()
  assert.deepEqual(tag, macaroon.tail)
  // Each caveat is signed as the MessagePack array [type, body].
  assert.deepEqual(macaroon.caveats[0]!.packed, pack([0, ['org-a', ACTION_ALL]]))
})

test('describeToken shows caveats in the JSON form without secrets', () => {
  const { token } = setup()
  const d = describeToken(token)
  assert.equal(d.kind, 'permission')
  assert.deepEqual(d.caveats[0], { type: 'Organization', body: { id: 'org-a', mask: '*' } })
  assert.deepEqual(d.caveats[1], { type: 'Apps', body: { apps: { web: '*' } } })
  assert.equal(d.tokenId, tokenId(token))
})

test('attenuated tokens share the token id of the token they came from', () => {
  const { token } = setup()
  const narrower = attenuate(token, [{ type: 'Action', mask: ACTION_READ }])
  assert.notEqual(narrower, token)
  assert.equal(tokenId(narrower), tokenId(token))
})

// ---------------------------------------------------------------- tampering

function rebuild(m: Macaroon, change: Partial<Macaroon>): string {
  return encodeToken({ ...m, ...change })
}

function withNonce(m: Macaroon, kid: Buffer): Macaroon {
  const nonce = { ...m.nonce, kid }
  return { ...m, nonce, nonceBytes: pack([nonce.kid, nonce.rnd, nonce.proof]) }
}

interface TamperCase { name: string; make: (ctx: ReturnType<typeof setup>) => string; reason: TokenRejectionReason }

const TAMPER_CASES: TamperCase[] = [
  {
    name: 'changed caveat (app web → api)',
    make: ({ macaroon }) => {
      const changed: Caveat = { type: 'Apps', apps: { api: ACTION_ALL } }
      const caveats = macaroon.caveats.map((c, i) => (i === 1 ? { caveat: changed, packed: packCaveat(changed) } : c))
      return rebuild(macaroon, { caveats })
    },
    reason: 'bad_signature',
  },
  {
    name: 'widened caveat (read → all) in place',
    make: ({ keyA }) => {
      const m = mintMacaroon({ kid: Buffer.from(keyA.kid, 'hex'), key: keyA.secret, caveats: [{ type: 'Organization', id: 'org-a', mask: ACTION_READ }] })
      const wide: Caveat = { type: 'Organization', id: 'org-a', mask: ACTION_ALL }
      return rebuild(m, { caveats: [{ caveat: wide, packed: packCaveat(wide) }] })
    },
    reason: 'bad_signature',
  },
  { name: 'dropped caveat', make: ({ macaroon }) => rebuild(macaroon, { caveats: macaroon.caveats.slice(0, 2) }), reason: 'bad_signature' },
  { name: 'dropped first caveat', make: ({ macaroon }) => rebuild(macaroon, { caveats: macaroon.caveats.slice(1) }), reason: 'bad_signature' },
  {
    name: 'reordered caveats',
    make: ({ macaroon }) => rebuild(macaroon, { caveats: [macaroon.caveats[1]!, macaroon.caveats[0]!, macaroon.caveats[2]!] }),
    reason: 'bad_signature',
  },
  {
    name: 'appended caveat without re-HMAC',
    make: ({ macaroon }) => {
      const extra: Caveat = { type: 'Machines', machines: { '148ed193b95089': ACTION_READ } }
      return rebuild(macaroon, { caveats: [...macaroon.caveats, { caveat: extra, packed: packCaveat(extra) }] })
    },
    reason: 'bad_signature',
  },
  {
    name: 'signed with the wrong key under the right kid',
    make: ({ keyA, macaroon }) => encodeToken(mintMacaroon({ kid: Buffer.from(keyA.kid, 'hex'), key: Buffer.alloc(32, 7), caveats: macaroon.caveats.map((c) => c.caveat) })),
    reason: 'bad_signature',
  },
  { name: 'kid of another existing key', make: ({ keyB, macaroon }) => encodeToken(withNonce(macaroon, Buffer.from(keyB.kid, 'hex'))), reason: 'bad_signature' },
  { name: 'unknown kid', make: ({ macaroon }) => encodeToken(withNonce(macaroon, Buffer.alloc(16, 0xab))), reason: 'unknown_key' },
  {
    name: 'changed nonce rnd',
    make: ({ macaroon }) => {
      const nonce = { ...macaroon.nonce, rnd: Buffer.alloc(16, 1) }
      return rebuild(macaroon, { nonce, nonceBytes: pack([nonce.kid, nonce.rnd, nonce.proof]) })
    },
    reason: 'bad_signature',
  },
  {
    name: 'flipped bit in the tail',
    make: ({ macaroon }) => {
      const tail = Buffer.from(macaroon.tail)
      tail[5]! ^= 0x01
      return rebuild(macaroon, { tail })
    },
    reason: 'bad_signature',
  },
  { name: 'truncated token', make: ({ token }) => token.slice(0, token.length - 12), reason: 'malformed' },
  { name: 'truncated to the prefix', make: () => 'fm2_', reason: 'malformed' },
  { name: 'non-base64 characters', make: ({ token }) => token.slice(0, 20) + '!*' + token.slice(22), reason: 'malformed' },
  { name: 'base64url instead of base64', make: ({ token }) => token.replace(/\+/g, '-').replace(/\//g, '_') + (/[+/]/.test(token) ? '' : '-'), reason: 'malformed' },
  { name: 'trailing bytes after the token', make: ({ token }) => TOKEN_PREFIX + Buffer.concat([Buffer.from(token.slice(4), 'base64'), Buffer.from([0xc0])]).toString('base64'), reason: 'malformed' },
  { name: 'not MessagePack at all', make: () => TOKEN_PREFIX + Buffer.from('hello world, not a token').toString('base64'), reason: 'malformed' },
  { name: 'wrong prefix fm1r_', make: ({ token }) => 'fm1r_' + token.slice(4), reason: 'wrong_prefix' },
  { name: 'OAuth prefix fo1_', make: () => 'fo1_abcdef', reason: 'wrong_prefix' },
  { name: 'no prefix', make: ({ token }) => token.slice(4), reason: 'wrong_prefix' },
]

for (const tc of TAMPER_CASES) {
  test(`tampering is rejected with 401: ${tc.name}`, async () => {
    const ctx = setup()
    const tampered = tc.make(ctx)
    assert.notEqual(tampered, ctx.token)
    await assert.rejects(verifyTokens([tampered], { keys: ctx.keys }), (err: unknown) => {
      assert.ok(err instanceof TokenRejectedError, `expected TokenRejectedError, got ${String(err)}`)
      assert.equal(err.reason, tc.reason)
      assert.equal(err.httpStatus, 401)
      const fragment = tampered.slice(4, 24)
      if (fragment.length >= 8) assert.ok(!err.message.includes(fragment), 'the message does not echo token bytes')
      return true
    })
  })
}

test('the untampered token is accepted (control for the table)', async () => {
  const ctx = setup()
  const verified = await verifyTokens([ctx.token], { keys: ctx.keys })
  assert.equal(verified.length, 1)
  assert.equal(verified[0]!.orgId, 'org-a')
  assert.deepEqual(authorize(verified, { action: 'w', orgId: 'org-a', appId: 'web' }, NOW).orgId, 'org-a')
})

test('expired and not-yet-valid windows are 401 with the time named', async () => {
  const ctx = setup()
  const verified = await verifyTokens([ctx.token], { keys: ctx.keys })
  assert.throws(() => authorize(verified, { action: 'r', orgId: 'org-a', appId: 'web' }, NOW + 2 * 3600_000), (err: unknown) => {
    assert.ok(err instanceof TokenRejectedError)
    assert.equal(err.reason, 'expired')
    assert.equal(err.httpStatus, 401)
    assert.match(err.message, /expired at 2026-01-15T13:00:00.000Z/)
    return true
  })
  assert.throws(() => authorize(verified, { action: 'r', orgId: 'org-a', appId: 'web' }, NOW - 3600_000), (err: unknown) => err instanceof TokenRejectedError && err.reason === 'not_yet_valid')
})

test('a decoded token with an unknown caveat type keeps it and is refused (fail closed)', async () => {
  const ctx = setup()
  const unknownPacked = pack([BigInt(2 ** 50), ['something new']])
  const m = decodeToken(ctx.token)
  const { hmac } = await import('./aead.js')
  const tampered = encodeToken({ ...m, caveats: [...m.caveats, { caveat: { type: 'Unknown', typeNumber: 2 ** 50, body: null }, packed: unknownPacked }], tail: hmac(m.tail, unknownPacked) })
  const decoded = decodeToken(tampered)
  assert.deepEqual(decoded.caveats[3]!.caveat, { type: 'Unknown', typeNumber: 2 ** 50, body: ['something new'] })
  const verified = await verifyTokens([tampered], { keys: ctx.keys })
  assert.throws(() => authorize(verified, { action: 'r', orgId: 'org-a', appId: 'web' }, NOW), (err: Error & { reason?: string; httpStatus?: number }) => err.reason === 'unknown_caveat' && err.httpStatus === 403)
})
