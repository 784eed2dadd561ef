import { createHash, type Hash } from 'node:crypto'
import { ImagePullError } from './errors.js'

// OCI image-spec descriptor.md "Digests": `algorithm:encoded`; the registered algorithms are sha256
// (64 lowercase hex) and sha512 (128 lowercase hex). Everything Hangar stores is named by such a
// digest and is hashed again on the way in: a blob is trusted only after its bytes hash to its name.

export type DigestAlgorithm = 'sha256' | 'sha512'

export interface ParsedDigest {
  algorithm: DigestAlgorithm
  hex: string
}

const ENCODED_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 }

/** Parses a digest Hangar can verify; anything else is an `unsupported`/`invalid_image` pull error. */
export function parseDigest(digest: string, what = 'digest'): ParsedDigest {
  const colon = typeof digest === 'string' ? digest.indexOf(':') : -1
  if (colon <= 0) throw new ImagePullError('invalid_image', `${what} ${JSON.stringify(digest)} is not a digest (expected algorithm:hex)`)
  const algorithm = digest.slice(0, colon)
  const hex = digest.slice(colon + 1)
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw new ImagePullError('unsupported', `${what} ${digest} uses the digest algorithm "${algorithm}"; only sha256 and sha512 are supported`)
  }
  if (hex.length !== ENCODED_LENGTH[algorithm] || !/^[0-9a-f]+$/.test(hex)) {
    throw new ImagePullError('invalid_image', `${what} ${JSON.stringify(digest)} is not a valid ${algorithm} digest (${ENCODED_LENGTH[algorithm]} lowercase hex digits)`)
  }
  return { algorithm, hex }
}

export function isDigest(value: unknown): value is string {
  if (typeof value !== 'string') return false
  try { parseDigest(value); return true } catch { return false }
}

export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`
}

/** Hashes a stream as it passes and counts its bytes, for checking against a descriptor at the end. */
export class DigestAccumulator {
  readonly expected: string
  private readonly hash: Hash
  private readonly algorithm: DigestAlgorithm
  bytes = 0
  constructor(expected: string) {
    this.expected = expected
    this.algorithm = parseDigest(expected).algorithm
    this.hash = createHash(this.algorithm)
  }
  update(chunk: Uint8Array): void {
    this.hash.update(chunk)
    this.bytes += chunk.length
  }
  /** The digest of everything seen (call once). */
  digest(): string {
    return `${this.algorithm}:${this.hash.digest('hex')}`
  }
}

/** Throws a `digest_mismatch` pull error unless `actual` equals `expected`. */
export function assertDigest(what: string, expected: string, actual: string): void {
  if (expected !== actual) throw new ImagePullError('digest_mismatch', `${what} digest mismatch: expected ${expected}, got ${actual}`)
}
