import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { InvalidArgumentError } from '../core/index.js'
import { hmac, open, randomKey, seal, SealedBoxError } from './aead.js'
import { caveatFromWire, caveatsFromFlatList, describeCaveat, caveatToJSON, packCaveat, packCaveatList, validateCaveat, type Caveat, type CaveatJSON, type ThirdPartyCaveat } from './caveats.js'
import { TokenRejectedError } from './errors.js'
import { decodeFrame, pack, splitArray } from './msgpack-frames.js'

// reference §6, superfly/macaroon `macaroon.go`, `nonce.go`, `format.go`:
//
//   token  = "fm2_" base64( msgpack [ nonce, location, caveats, tail ] )
//   nonce  = msgpack [ kid (bin), rnd (bin), proof (bool) ]
//   T0     = HMAC-SHA256(signing key, nonce bytes)
//   Ti     = HMAC-SHA256(Ti-1, caveat_i bytes)        caveat_i bytes = msgpack [type, body]
//   tail   = Tn
//
// Anyone holding a token can append a caveat (attenuation) by continuing the chain from the tail;
// nobody can remove or change one without the signing key, because every earlier Ti is gone.
// A third-party (3P) caveat carries an ephemeral key r sealed twice: under the tail at the point it
// was added (VID, for the verifier) and under the third party's key with the caveats it should
// check (CID, the ticket). The third party mints a discharge token whose nonce kid is the ticket
// and whose chain is keyed by r; the verifier recovers r from VID and checks the discharge.

export const TOKEN_PREFIX = 'fm2_'
/** Where permission tokens come from. A token with any other location is a discharge. */
export const PERMISSION_LOCATION = 'hangar:permission'
/** A token larger than this is refused before decoding (a header is not a place for megabytes). */
export const MAX_TOKEN_CHARS = 16 * 1024
const TAIL_BYTES = 32
const RND_BYTES = 16

export interface Nonce {
  /** Key id: which signing key started the chain (for discharges: the 3P ticket). */
  kid: Buffer
  rnd: Buffer
  proof: boolean
}

/** A caveat with the exact bytes it was signed as (kept from the wire, never re-encoded). */
export interface SignedCaveat {
  caveat: Caveat
  packed: Buffer
}

export interface Macaroon {
  nonce: Nonce
  nonceBytes: Buffer
  location: string
  caveats: readonly SignedCaveat[]
  tail: Buffer
}

// ---------------------------------------------------------------- wire format

function malformed(detail: string): TokenRejectedError {
  return new TokenRejectedError('malformed', `the token is malformed: ${detail}`)
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

/** Decodes `fm2_…` into a Macaroon without verifying it. Throws TokenRejectedError
 * (`wrong_prefix` or `malformed`) with a message that names no token bytes. */
export function decodeToken(token: string): Macaroon {
  if (typeof token !== 'string') throw malformed('expected a string')
  if (!token.startsWith(TOKEN_PREFIX)) {
    const shown = /^[a-z0-9]{1,6}_/.exec(token)?.[0]
    throw new TokenRejectedError('wrong_prefix', `Hangar tokens start with ${TOKEN_PREFIX}${shown ? ` (this one starts with ${shown})` : ''}`)
  }
  if (token.length > MAX_TOKEN_CHARS) throw malformed(`longer than ${MAX_TOKEN_CHARS} characters`)
  const text = token.slice(TOKEN_PREFIX.length)
  if (text.length === 0 || !BASE64.test(text)) throw malformed('not base64')
  const bytes = Buffer.from(text, 'base64')
  // Buffer's decoder skips junk silently; a canonical round trip proves every character counted.
  if (bytes.toString('base64').replace(/=+$/, '') !== text.replace(/=+$/, '')) throw malformed('not canonical base64 (truncated or altered)')
  try {
    return decodeMacaroonBytes(bytes)
  } catch (err) {
    if (err instanceof TokenRejectedError) throw err
    throw malformed((err as Error).message)
  }
}

function decodeMacaroonBytes(bytes: Buffer): Macaroon {
  const top = splitArray(bytes, 0)
  if (top.end !== bytes.length) throw malformed('trailing bytes after the token')
  if (top.elements.length !== 4) throw malformed(`expected 4 fields (nonce, location, caveats, tail), found ${top.elements.length}`)
  const [nonceRange, locationRange, caveatsRange, tailRange] = top.elements as [[number, number], [number, number], [number, number], [number, number]]

  const nonceFields = splitArray(bytes, nonceRange[0])
  if (nonceFields.elements.length !== 3) throw malformed('the nonce must have 3 fields (kid, rnd, proof)')
  const kid = decodeFrame(bytes, nonceFields.elements[0]!)
  const rnd = decodeFrame(bytes, nonceFields.elements[1]!)
  const proof = decodeFrame(bytes, nonceFields.elements[2]!)
  if (!(kid instanceof Uint8Array) || kid.length === 0) throw malformed('the nonce key id must be non-empty bytes')
  if (!(rnd instanceof Uint8Array)) throw malformed('the nonce rnd must be bytes')
  if (typeof proof !== 'boolean') throw malformed('the nonce proof flag must be a boolean')

  const location = decodeFrame(bytes, locationRange)
  if (typeof location !== 'string') throw malformed('the location must be a string')

  const list = splitArray(bytes, caveatsRange[0])
  if (list.elements.length % 2 !== 0) throw malformed('the caveat list has an odd number of elements')
  const caveats: SignedCaveat[] = []
  for (let i = 0; i < list.elements.length; i += 2) {
    const typeRange = list.elements[i]!
    const bodyRange = list.elements[i + 1]!
    const caveat = caveatFromWire(decodeFrame(bytes, typeRange), decodeFrame(bytes, bodyRange))
    const packed = Buffer.concat([Buffer.from([0x92]), bytes.subarray(typeRange[0], typeRange[1]), bytes.subarray(bodyRange[0], bodyRange[1])])
    caveats.push({ caveat, packed })
  }

  const tail = decodeFrame(bytes, tailRange)
  if (!(tail instanceof Uint8Array) || tail.length !== TAIL_BYTES) throw malformed(`the tail must be ${TAIL_BYTES} bytes`)

  return {
    nonce: { kid: Buffer.from(kid), rnd: Buffer.from(rnd), proof },
    nonceBytes: Buffer.from(bytes.subarray(nonceRange[0], nonceRange[1])),
    location,
    caveats,
    tail: Buffer.from(tail),
  }
}

export function encodeToken(macaroon: Macaroon): string {
  const bytes = Buffer.concat([
    Buffer.from([0x94]),
    macaroon.nonceBytes,
    pack(macaroon.location),
    packCaveatList(macaroon.caveats.map((c) => c.packed)),
    pack(macaroon.tail),
  ])
  return TOKEN_PREFIX + bytes.toString('base64')
}

// ---------------------------------------------------------------- signing

function packNonce(nonce: Nonce): Buffer {
  return pack([nonce.kid, nonce.rnd, nonce.proof])
}

/** The chain of tags: tags[0] = T0 (over the nonce), tags[i] = T after caveat i-1; the last is the
 * tail. tags[i] is also the key that sealed the VID of a 3P caveat at index i. */
export function signatureChain(key: Uint8Array, macaroon: Pick<Macaroon, 'nonceBytes' | 'caveats'>): Buffer[] {
  const tags = [hmac(key, macaroon.nonceBytes)]
  for (const { packed } of macaroon.caveats) tags.push(hmac(tags[tags.length - 1]!, packed))
  return tags
}

/** True when the chain from `key` ends in the token's tail (constant-time compare). */
export function hasValidSignature(key: Uint8Array, macaroon: Macaroon, chain = signatureChain(key, macaroon)): boolean {
  const computed = chain[chain.length - 1]!
  return computed.length === macaroon.tail.length && timingSafeEqual(computed, macaroon.tail)
}

function signCaveats(caveats: readonly Caveat[]): SignedCaveat[] {
  return caveats.map((caveat) => {
    if (caveat.type === 'ThirdParty') throw new InvalidArgumentError('add third-party caveats with addThirdPartyCaveat (they need the third party key)')
    validateCaveat(caveat)
    return { caveat, packed: packCaveat(caveat) }
  })
}

/** Mints a token: a fresh nonce naming `kid`, the chain keyed by `key`, then `caveats`. */
export function mintMacaroon(options: { kid: Uint8Array; key: Uint8Array; location?: string; caveats: readonly Caveat[] }): Macaroon {
  if (options.key.length < 32) throw new InvalidArgumentError('a signing key must be at least 32 bytes')
  const nonce: Nonce = { kid: Buffer.from(options.kid), rnd: randomBytes(RND_BYTES), proof: false }
  const nonceBytes = packNonce(nonce)
  const caveats = signCaveats(options.caveats)
  const macaroon = { nonce, nonceBytes, location: options.location ?? PERMISSION_LOCATION, caveats, tail: Buffer.alloc(0) }
  const chain = signatureChain(options.key, macaroon)
  return { ...macaroon, tail: chain[chain.length - 1]! }
}

function appendSigned(macaroon: Macaroon, signed: readonly SignedCaveat[]): Macaroon {
  let tail = macaroon.tail
  for (const { packed } of signed) tail = hmac(tail, packed)
  return { ...macaroon, caveats: [...macaroon.caveats, ...signed], tail }
}

/** reference §6: attenuation without the server. Appends caveats and continues the chain from the
 * old tail. The result can only do less: every caveat, old and new, must pass. */
export function attenuate(token: string, caveats: readonly Caveat[]): string {
  if (caveats.length === 0) throw new InvalidArgumentError('attenuate: give at least one caveat')
  return encodeToken(appendSigned(decodeToken(token), signCaveats(caveats)))
}

/** A stable id for revocation and listing: derived from the nonce, so every token attenuated
 * from one minted token shares its id, and revoking it revokes them all. */
export function tokenIdOf(macaroon: Pick<Macaroon, 'nonceBytes'>): string {
  return createHash('sha256').update(macaroon.nonceBytes).digest('hex').slice(0, 32)
}

export function tokenId(token: string): string {
  return tokenIdOf(decodeToken(token))
}

// ---------------------------------------------------------------- third parties

/** reference §6 3P: adds a caveat that only a discharge from `location` satisfies. `thirdPartyKey`
 * is the 32-byte key shared with that third party; `caveats` are what it is asked to check. */
export function addThirdPartyCaveat(token: string, options: { location: string; thirdPartyKey: Uint8Array; caveats?: readonly Caveat[] }): string {
  const macaroon = decodeToken(token)
  if (macaroon.caveats.some((c) => c.caveat.type === 'ThirdParty' && c.caveat.location === options.location)) {
    throw new InvalidArgumentError(`the token already has a third-party caveat for ${options.location}`)
  }
  const dischargeKey = randomKey()
  const ticketCaveats = signCaveats(options.caveats ?? [])
  const ticketPlain = Buffer.concat([Buffer.from([0x92]), pack(dischargeKey), packCaveatList(ticketCaveats.map((c) => c.packed))])
  const caveat: ThirdPartyCaveat = {
    type: 'ThirdParty',
    location: options.location,
    verifierKey: seal(macaroon.tail, dischargeKey),
    ticket: seal(options.thirdPartyKey, ticketPlain),
  }
  validateCaveat(caveat)
  return encodeToken(appendSigned(macaroon, [{ caveat, packed: packCaveat(caveat) }]))
}

/** What a client must get discharged: one ticket per third-party caveat (unverified read). */
export function thirdPartyTickets(token: string): Array<{ location: string; ticket: Buffer }> {
  return decodeToken(token).caveats
    .filter((c): c is SignedCaveat & { caveat: ThirdPartyCaveat } => c.caveat.type === 'ThirdParty')
    .map((c) => ({ location: c.caveat.location, ticket: Buffer.from(c.caveat.ticket) }))
}

/** The third party's side: opens a ticket with its key, learning the discharge key r and the
 * caveats it was asked to check. Throws InvalidArgumentError if the ticket is not for this key. */
export function openTicket(thirdPartyKey: Uint8Array, ticket: Uint8Array): { dischargeKey: Buffer; caveats: Caveat[] } {
  let plain: Buffer
  try {
    plain = open(thirdPartyKey, ticket)
  } catch (err) {
    if (err instanceof SealedBoxError) throw new InvalidArgumentError('the ticket does not open with this third-party key')
    throw err
  }
  try {
    const fields = splitArray(plain, 0)
    if (fields.elements.length !== 2 || fields.end !== plain.length) throw new Error('expected [discharge key, caveats]')
    const dischargeKey = decodeFrame(plain, fields.elements[0]!)
    if (!(dischargeKey instanceof Uint8Array) || dischargeKey.length !== 32) throw new Error('bad discharge key')
    return { dischargeKey: Buffer.from(dischargeKey), caveats: caveatsFromFlatList(decodeFrame(plain, fields.elements[1]!)) }
  } catch (err) {
    throw new InvalidArgumentError(`the ticket is malformed: ${(err as Error).message}`)
  }
}

/** The third party's side: mints the discharge token for a ticket. Its caveats (typically a short
 * validity window) are checked with the permission token's on every request. */
export function mintDischarge(options: { ticket: Uint8Array; dischargeKey: Uint8Array; location: string; caveats?: readonly Caveat[] }): string {
  if (options.location === PERMISSION_LOCATION) throw new InvalidArgumentError(`a discharge cannot use the permission location ${PERMISSION_LOCATION}`)
  return encodeToken(mintMacaroon({ kid: options.ticket, key: options.dischargeKey, location: options.location, caveats: options.caveats ?? [] }))
}

/** Recovers r from a 3P caveat's VID given the chain tag at its position. */
export function recoverDischargeKey(caveat: ThirdPartyCaveat, tagBefore: Uint8Array): Buffer | undefined {
  try {
    return open(tagBefore, caveat.verifierKey)
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------- inspection

export interface TokenDescription {
  tokenId: string
  kid: string
  location: string
  kind: 'permission' | 'discharge'
  caveats: CaveatJSON[]
  summary: string[]
}

/** An unverified look inside a token, for `hangar tokens debug`. Prints no secret material. */
export function describeToken(token: string): TokenDescription {
  const m = decodeToken(token)
  return {
    tokenId: tokenIdOf(m),
    kid: m.location === PERMISSION_LOCATION ? m.nonce.kid.toString('hex') : `ticket (${m.nonce.kid.length} bytes)`,
    location: m.location,
    kind: m.location === PERMISSION_LOCATION ? 'permission' : 'discharge',
    caveats: m.caveats.map((c) => caveatToJSON(c.caveat)),
    summary: m.caveats.map((c) => describeCaveat(c.caveat)),
  }
}
