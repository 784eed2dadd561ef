// Front door of src/auth: macaroon tokens in Fly's design (reference §6) — format, caveats,
// attenuation, third-party discharges, verification against a request, token kinds, and the
// ports (KeyStore, RevocationList) the API implements.
export * from './action-mask.js'
export * from './errors.js'
export * from './caveats.js'
export * from './access.js'
export { seal, open, hmac, randomKey, SealedBoxError, AEAD_KEY_BYTES } from './aead.js'
export * from './macaroon.js'
export * from './authorization-header.js'
export * from './key-store.js'
export * from './revocation-list.js'
export * from './verifier.js'
export * from './token-kinds.js'
