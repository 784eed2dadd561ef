import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { InvalidArgumentError } from '../core/index.js'

// WireGuard keys are Curve25519 (X25519) keys, written as standard base64 of 32 raw bytes
// (wg(8): "genkey … pubkey"). Node's crypto does X25519, so Hangar makes and derives keys
// itself instead of spawning `wg genkey | wg pubkey`; the result is the same bytes wg prints
// (a test checks against `wg pubkey`).

const KEY_BYTES = 32
const PKCS8_X25519_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex')

/** True for a base64 string of exactly 32 bytes, as wg accepts. */
export function isWireguardKey(value: unknown): value is string {
  return typeof value === 'string' && /^[A-Za-z0-9+/]{43}=$/.test(value) && Buffer.from(value, 'base64').length === KEY_BYTES
}

/** A new private key, clamped as `wg genkey` clamps it (RFC 7748 §5). */
export function generateWireguardPrivateKey(): string {
  const { privateKey } = generateKeyPairSync('x25519')
  const raw = Buffer.from(privateKey.export({ format: 'jwk' }).d!, 'base64url')
  raw[0]! &= 248
  raw[31] = (raw[31]! & 127) | 64
  return raw.toString('base64')
}

export function wireguardPublicKey(privateKey: string): string {
  if (!isWireguardKey(privateKey)) throw new InvalidArgumentError('a WireGuard private key is 32 bytes in base64 (44 characters ending in "=")')
  // A raw X25519 scalar wrapped as PKCS#8 (RFC 8410: the fixed 16-byte header, then 32 bytes);
  // Node 20 cannot import a JWK private key without its public half.
  const key = createPrivateKey({ key: Buffer.concat([PKCS8_X25519_PREFIX, Buffer.from(privateKey, 'base64')]), format: 'der', type: 'pkcs8' })
  return Buffer.from(createPublicKey(key).export({ format: 'jwk' }).x!, 'base64url').toString('base64')
}

/** Reads the host's private key, or makes one. The file is the host's identity on the mesh:
 * mode 0600, kept across restarts so peers need not relearn the public key. */
export function loadOrCreatePrivateKey(path: string): string {
  if (existsSync(path)) {
    const key = readFileSync(path, 'utf8').trim()
    if (!isWireguardKey(key)) throw new InvalidArgumentError(`${path} does not hold a WireGuard private key (32 bytes in base64); remove it to make a new one`)
    chmodSync(path, 0o600)
    return key
  }
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  const key = generateWireguardPrivateKey()
  writeFileSync(path, key + '\n', { mode: 0o600, flag: 'wx' })
  return key
}
