import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isInvalidArgument } from '../core/index.js'
import { generateWireguardPrivateKey, isWireguardKey, loadOrCreatePrivateKey, wireguardPublicKey } from './wireguard-keys.js'

test('keys: clamped like wg genkey, and the public key is the one `wg pubkey` derives', () => {
  for (let i = 0; i < 5; i++) {
    const privateKey = generateWireguardPrivateKey()
    assert.ok(isWireguardKey(privateKey))
    const raw = Buffer.from(privateKey, 'base64')
    assert.equal(raw[0]! & 7, 0)
    assert.equal(raw[31]! & 128, 0)
    assert.equal(raw[31]! & 64, 64)
    const expected = execFileSync('wg', ['pubkey'], { input: privateKey + '\n' }).toString().trim()
    assert.equal(wireguardPublicKey(privateKey), expected)
  }
  // A key from wg itself derives the same way.
  const fromWg = execFileSync('wg', ['genkey']).toString().trim()
  assert.equal(wireguardPublicKey(fromWg), execFileSync('wg', ['pubkey'], { input: fromWg }).toString().trim())
  assert.throws(() => wireguardPublicKey('not-a-key'), isInvalidArgument)
  assert.ok(!isWireguardKey('A'.repeat(44)))
  assert.ok(!isWireguardKey(Buffer.alloc(31).toString('base64')))
})

test('the private key file: created 0600 once, then reused; a corrupt file is an error naming it', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-wgkey-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'wireguard', 'private.key')
  const first = loadOrCreatePrivateKey(path)
  assert.equal(statSync(path).mode & 0o777, 0o600)
  assert.equal(statSync(join(dir, 'wireguard')).mode & 0o077, 0)
  assert.equal(readFileSync(path, 'utf8').trim(), first)
  assert.equal(loadOrCreatePrivateKey(path), first)
  writeFileSync(path, 'garbage')
  assert.throws(() => loadOrCreatePrivateKey(path), (err: unknown) => isInvalidArgument(err) && (err as Error).message.includes(path))
})
