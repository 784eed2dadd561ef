import type { Caveat, ThirdPartyCaveat } from './caveats.js'
import { evaluateCaveats, normaliseAccess, type Access } from './access.js'
import { parseAuthorizationHeader } from './authorization-header.js'
import { AccessDeniedError, TokenRejectedError, type AccessDenialReason, type TokenRejectionReason } from './errors.js'
import type { KeyStore } from './key-store.js'
import { decodeToken, hasValidSignature, PERMISSION_LOCATION, recoverDischargeKey, signatureChain, tokenIdOf, type Macaroon } from './macaroon.js'
import type { RevocationList } from './revocation-list.js'

// reference §6: verification in two steps.
//   1. verifyTokens — cryptography, once per request: decode every token, look up each permission
//      token's key by kid, recompute its HMAC chain, check revocation, and for each 3P caveat recover
//      r from VID and verify a matching discharge (whose caveats join the token's).
//   2. authorize — pure, per access: a request is allowed if ANY verified token's caveats ALL pass.
// Failures in step 1 are 401s. In step 2, a validity window that has ended is a 401 and every other
// refusal a 403 (AccessDeniedError; `concealAsNotFound` when the only problem is another org).

export interface VerifierOptions {
  keys: KeyStore
  revocations?: RevocationList
  /** Defaults to PERMISSION_LOCATION. Tokens at other locations are treated as discharges. */
  permissionLocation?: string
}

export interface VerifiedToken {
  tokenId: string
  kid: string
  /** The organization of the key that signed it: a token never reaches beyond its key's org. */
  orgId: string
  /** The token's own caveats (3P caveats settled) followed by its discharges' caveats. */
  caveats: readonly Caveat[]
  dischargeCount: number
}

export interface AuthorizedAccess {
  tokenId: string
  orgId: string
  /** Position of the allowing token among the verified ones. */
  tokenIndex: number
}

interface Rejection { reason: TokenRejectionReason; message: string }

function combineRejections(rejections: readonly Rejection[]): TokenRejectedError {
  const first = rejections[0]!
  if (rejections.length === 1) return new TokenRejectedError(first.reason, first.message)
  const message = rejections.map((r, i) => `token ${i + 1}: ${r.message}`).join('; ')
  return new TokenRejectedError(first.reason, message, rejections.map((r) => r.reason))
}

async function verifyPermissionToken(macaroon: Macaroon, discharges: readonly Macaroon[], options: VerifierOptions): Promise<VerifiedToken | Rejection> {
  const kid = macaroon.nonce.kid.toString('hex')
  const key = await options.keys.getKey(kid)
  if (!key) return { reason: 'unknown_key', message: 'the token was signed by a key this server does not know (another installation, or a deleted organization)' }
  const chain = signatureChain(key.secret, macaroon)
  if (!hasValidSignature(key.secret, macaroon, chain)) {
    return { reason: 'bad_signature', message: 'the token signature does not verify: it was altered or its caveats were changed, removed or reordered' }
  }
  const tokenId = tokenIdOf(macaroon)
  if (options.revocations && await options.revocations.isRevoked(tokenId)) return { reason: 'revoked', message: `the token ${tokenId} has been revoked` }

  const caveats: Caveat[] = []
  let dischargeCount = 0
  for (let i = 0; i < macaroon.caveats.length; i++) {
    const caveat = macaroon.caveats[i]!.caveat
    if (caveat.type !== 'ThirdParty') { caveats.push(caveat); continue }
    const settled = await settleThirdParty(caveat, chain[i]!, discharges, options)
    if ('reason' in settled) return settled
    caveats.push(...settled.caveats)
    dischargeCount++
  }
  return { tokenId, kid, orgId: key.orgId, caveats, dischargeCount }
}

async function settleThirdParty(caveat: ThirdPartyCaveat, tagBefore: Buffer, discharges: readonly Macaroon[], options: VerifierOptions): Promise<{ caveats: Caveat[] } | Rejection> {
  const candidates = discharges.filter((d) => d.nonce.kid.equals(caveat.ticket))
  if (candidates.length === 0) {
    return { reason: 'missing_discharge', message: `the token needs a discharge token from ${caveat.location} and none was sent` }
  }
  const dischargeKey = recoverDischargeKey(caveat, tagBefore)
  if (!dischargeKey) return { reason: 'bad_discharge', message: `the third-party caveat for ${caveat.location} is damaged` }
  for (const discharge of candidates) {
    if (!hasValidSignature(dischargeKey, discharge)) continue
    // Discharges do not nest: a discharge that itself demands a third party is refused.
    if (discharge.caveats.some((c) => c.caveat.type === 'ThirdParty')) continue
    if (options.revocations && await options.revocations.isRevoked(tokenIdOf(discharge))) continue
    return { caveats: discharge.caveats.map((c) => c.caveat) }
  }
  return { reason: 'bad_discharge', message: `the discharge token from ${caveat.location} does not verify` }
}

/** Step 1: verifies the tokens of one request. Returns every permission token that verified (at
 * least one) or throws TokenRejectedError. */
export async function verifyTokens(tokens: readonly string[], options: VerifierOptions): Promise<VerifiedToken[]> {
  const permissionLocation = options.permissionLocation ?? PERMISSION_LOCATION
  const rejections: Rejection[] = []
  const permission: Macaroon[] = []
  const discharges: Macaroon[] = []
  for (const token of tokens) {
    try {
      const macaroon = decodeToken(token)
      if (macaroon.location === permissionLocation) permission.push(macaroon)
      else discharges.push(macaroon)
    } catch (err) {
      if (!(err instanceof TokenRejectedError)) throw err
      rejections.push({ reason: err.reason, message: err.message.replace(/^unauthorized: /, '') })
    }
  }
  if (permission.length === 0) {
    if (rejections.length > 0) throw combineRejections(rejections)
    throw new TokenRejectedError('missing', 'only discharge tokens were sent; a permission token is required')
  }
  const verified: VerifiedToken[] = []
  for (const macaroon of permission) {
    const result = await verifyPermissionToken(macaroon, discharges, options)
    if ('reason' in result) rejections.push(result)
    else verified.push(result)
  }
  if (verified.length === 0) throw combineRejections(rejections)
  return verified
}

/** Step 2: allowed if any verified token allows the access. `nowMs` decides validity windows. */
export function authorize(verified: readonly VerifiedToken[], access: Access, nowMs: number = Date.now()): AuthorizedAccess {
  const request = normaliseAccess(access)
  const nowSeconds = Math.floor(nowMs / 1000)
  const denials: Array<{ reason: AccessDenialReason; message: string }> = []
  const lapses: Rejection[] = []
  for (let i = 0; i < verified.length; i++) {
    const token = verified[i]!
    // A token is bound to its signing key's org whatever its caveats say.
    if (request.orgId !== undefined && request.orgId !== token.orgId) {
      denials.push({ reason: 'wrong_org', message: `the token is not valid for organization ${request.orgId}` })
      continue
    }
    const outcome = evaluateCaveats(token.caveats, request, nowSeconds)
    if (outcome.kind === 'allow') return { tokenId: token.tokenId, orgId: token.orgId, tokenIndex: i }
    if (outcome.kind === 'deny') denials.push({ reason: outcome.reason, message: outcome.message })
    else lapses.push({ reason: outcome.kind, message: outcome.message })
  }
  if (denials.length > 0) {
    const message = denials.length === 1 ? denials[0]!.message : denials.map((d, i) => `token ${i + 1}: ${d.message}`).join('; ')
    const primary = denials.find((d) => d.reason !== 'wrong_org') ?? denials[0]!
    throw new AccessDeniedError(primary.reason, message, denials.map((d) => d.reason))
  }
  throw combineRejections(lapses)
}

/** The API's entry point: one object per process holding the key store and revocation list. */
export class TokenVerifier {
  readonly #options: VerifierOptions
  readonly #now: () => number

  constructor(options: VerifierOptions & { now?: () => number }) {
    this.#options = options
    this.#now = options.now ?? Date.now
  }

  /** Parses and verifies an Authorization header value (401 on failure). */
  async verifyHeader(header: string | readonly string[] | undefined | null): Promise<VerifiedToken[]> {
    return verifyTokens(parseAuthorizationHeader(header), this.#options)
  }

  /** Checks one access against already-verified tokens (401 expired / 403 denied). */
  authorize(verified: readonly VerifiedToken[], access: Access): AuthorizedAccess {
    return authorize(verified, access, this.#now())
  }

  /** Both steps at once. */
  async authorizeHeader(header: string | readonly string[] | undefined | null, access: Access): Promise<AuthorizedAccess> {
    return this.authorize(await this.verifyHeader(header), access)
  }
}
