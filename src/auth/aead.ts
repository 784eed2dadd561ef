import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto'

// reference §6: third-party caveats are sealed with ChaCha20-Poly1305 (node:crypto, IETF variant:
// 32-byte key, 12-byte nonce, 16-byte tag). A sealed box is nonce ‖ ciphertext ‖ tag. The same
// box serves the API for keys and secrets at rest.

export const AEAD_KEY_BYTES = 32
const NONCE_BYTES = 12
const TAG_BYTES = 16

export class SealedBoxError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'SealedBoxError'
  }
}

/** Encrypts and authenticates `plaintext` under a 32-byte key. `associatedData`, if given, must be
 * presented again to open the box (e.g. a row id, so a box cannot be moved to another row). */
export function seal(key: Uint8Array, plaintext: Uint8Array, associatedData?: Uint8Array): Buffer {
  if (key.length !== AEAD_KEY_BYTES) throw new SealedBoxError(`key must be ${AEAD_KEY_BYTES} bytes, got ${key.length}`)
  const nonce = randomBytes(NONCE_BYTES)
  const cipher = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_BYTES })
  if (associatedData) cipher.setAAD(associatedData, { plaintextLength: plaintext.length })
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()])
  return Buffer.concat([nonce, body, cipher.getAuthTag()])
}

/** Opens a box made by `seal`; throws SealedBoxError if the key is wrong or a byte changed. */
export function open(key: Uint8Array, box: Uint8Array, associatedData?: Uint8Array): Buffer {
  if (key.length !== AEAD_KEY_BYTES) throw new SealedBoxError(`key must be ${AEAD_KEY_BYTES} bytes, got ${key.length}`)
  if (box.length < NONCE_BYTES + TAG_BYTES) throw new SealedBoxError('sealed box is too short')
  const nonce = box.subarray(0, NONCE_BYTES)
  const tag = box.subarray(box.length - TAG_BYTES)
  const body = box.subarray(NONCE_BYTES, box.length - TAG_BYTES)
  const decipher = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_BYTES })
  decipher.setAuthTag(tag)
  if (associatedData) decipher.setAAD(associatedData, { plaintextLength: body.length })
  try {
    return Buffer.concat([decipher.update(body), decipher.final()])
  } catch {
    throw new SealedBoxError('sealed box does not open with this key (wrong key or altered bytes)')
  }
}

/** reference §6: HMAC-SHA256, the macaroon chain's one primitive. */
export function hmac(key: Uint8Array, message: Uint8Array): Buffer {
  return createHmac('sha256', key).update(message).digest()
}

export function randomKey(): Buffer {
  return randomBytes(AEAD_KEY_BYTES)
}
