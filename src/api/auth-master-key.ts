import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, statSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { InternalError, type Logger, silentLogger } from '../core/index.js'
import { AEAD_KEY_BYTES, hmac, randomKey } from '../auth/index.js'

// Issue 5: "keys and secrets at rest are encrypted". The API's store holds each org's signing key
// and each app's secrets sealed (ChaCha20-Poly1305, src/auth seal/open) under keys derived from
// one master key. The master key lives beside the store in `master.key`, 32 random bytes, mode
// 0600, created once; several API processes sharing one data dir race to create it, so creation
// is exclusive (O_EXCL) and the loser reads the winner's file.

export const MASTER_KEY_FILE = 'master.key'

/** Loads `<dataDir>/master.key`, creating it (0600) on first use. Without a data dir (an
 * in-memory store) the key is random and lives as long as the process. */
export function loadMasterKey(dataDir: string | undefined, logger: Logger = silentLogger): Buffer {
  if (dataDir === undefined) return randomKey()
  mkdirSync(dataDir, { recursive: true })
  const path = join(dataDir, MASTER_KEY_FILE)
  try {
    const fd = openSync(path, 'wx', 0o600)
    try {
      writeSync(fd, randomKey())
    } finally {
      closeSync(fd)
    }
    logger.info('created the API master key', { path })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  }
  const mode = statSync(path).mode & 0o777
  if ((mode & 0o077) !== 0) {
    // Anyone who reads this file can open every signing key and secret: tighten it at once.
    chmodSync(path, 0o600)
    logger.warn('the API master key file was readable by others; its mode is now 0600', { path })
  }
  const key = readFileSync(path)
  if (key.length !== AEAD_KEY_BYTES) throw new InternalError(`${path} holds ${key.length} bytes, not a ${AEAD_KEY_BYTES}-byte master key (restore it from a backup; without it no signing key or secret can be opened)`)
  return key
}

/** A key for one purpose, so a box sealed for one use can never be opened as another. */
export function deriveKey(masterKey: Uint8Array, purpose: string): Buffer {
  return hmac(masterKey, Buffer.from(`hangar-api-key:${purpose}`))
}
