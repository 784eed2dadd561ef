import { randomBytes } from 'node:crypto'
import { InvalidArgumentError } from '../core/index.js'

// reference §6: signing keys are per organization and a token's nonce names its key by id (kid).
// This is the port; the API implements it over its own SQLite store with secrets encrypted at rest
// (see `seal`/`open` in aead.ts). Several keys may exist per org (rotation): new tokens use the
// newest, old tokens keep verifying until their key is deleted.

export type MaybePromise<T> = T | Promise<T>

export interface SigningKeyRecord {
  /** Lowercase hex; on the wire the nonce carries these bytes. */
  kid: string
  orgId: string
  /** 32 random bytes. Never logged, never sent. */
  secret: Uint8Array
  createdAt: number
}

export interface KeyStore {
  getKey(kid: string): MaybePromise<SigningKeyRecord | undefined>
  /** The key new tokens for this org are signed with (the newest). */
  currentKey(orgId: string): MaybePromise<SigningKeyRecord | undefined>
  addKey(record: SigningKeyRecord): MaybePromise<void>
  /** Deleting a key invalidates every token it signed (e.g. when an org is deleted). */
  deleteKey(kid: string): MaybePromise<void>
}

const KID_PATTERN = /^[0-9a-f]{2,128}$/

export function isKid(value: string): boolean {
  return KID_PATTERN.test(value) && value.length % 2 === 0
}

/** A fresh key for an org: 16-byte random kid, 32-byte random secret. */
export function newSigningKey(orgId: string, nowMs: number = Date.now()): SigningKeyRecord {
  if (typeof orgId !== 'string' || orgId === '') throw new InvalidArgumentError('a signing key needs an organization id')
  return { kid: randomBytes(16).toString('hex'), orgId, secret: randomBytes(32), createdAt: nowMs }
}

/** For tests and single-process tools. */
export class InMemoryKeyStore implements KeyStore {
  readonly #keys = new Map<string, SigningKeyRecord>()

  getKey(kid: string): SigningKeyRecord | undefined {
    return this.#keys.get(kid)
  }

  currentKey(orgId: string): SigningKeyRecord | undefined {
    let newest: SigningKeyRecord | undefined
    for (const key of this.#keys.values()) {
      if (key.orgId === orgId && (newest === undefined || key.createdAt >= newest.createdAt)) newest = key
    }
    return newest
  }

  addKey(record: SigningKeyRecord): void {
    if (!isKid(record.kid)) throw new InvalidArgumentError(`key id ${JSON.stringify(record.kid)} must be lowercase hex`)
    if (record.secret.length < 32) throw new InvalidArgumentError('a signing key secret must be at least 32 bytes')
    if (this.#keys.has(record.kid)) throw new InvalidArgumentError(`key id ${record.kid} already exists`)
    this.#keys.set(record.kid, { ...record, secret: Buffer.from(record.secret) })
  }

  deleteKey(kid: string): void {
    this.#keys.delete(kid)
  }

  /** Creates, stores and returns a new key for the org. */
  createKey(orgId: string, nowMs: number = Date.now()): SigningKeyRecord {
    const record = newSigningKey(orgId, nowMs)
    this.addKey(record)
    return record
  }
}
