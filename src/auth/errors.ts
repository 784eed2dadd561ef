import { ForbiddenError, UnauthorizedError } from '../core/index.js'

// reference §6 and RFC 6750 §3.1: a token that cannot be trusted (malformed, tampered, signed by
// an unknown key, revoked, lacking its discharge) or is no longer/not yet valid (its validity
// window) is a 401 — the client must get another token. A token that verifies but whose caveats
// do not cover the request is a 403. The API turns `wrong_org` denials into 404s so that one
// org's token cannot even learn that another org's app exists (issue 5).

export type TokenRejectionReason =
  | 'missing'            // no Authorization header or no token in it
  | 'malformed'          // not base64, not MessagePack, wrong shape, truncated
  | 'wrong_prefix'       // not an `fm2_` macaroon
  | 'unknown_key'        // the nonce's key id names no signing key we hold
  | 'bad_signature'      // the HMAC chain does not end in the token's tail: tampered
  | 'revoked'            // its token id is on the revocation list
  | 'missing_discharge'  // a third-party caveat has no discharge token beside it
  | 'bad_discharge'      // a discharge was sent but does not verify
  | 'expired'            // a validity window (of the token or of a discharge) has ended
  | 'not_yet_valid'      // a validity window has not begun

export type AccessDenialReason =
  | 'wrong_org'
  | 'wrong_app'
  | 'wrong_machine'
  | 'wrong_volume'
  | 'action_not_allowed'
  | 'mutation_not_allowed'
  | 'command_not_allowed'
  | 'resource_unspecified' // the token is confined to a kind of resource the request does not name
  | 'unknown_caveat'       // a caveat this server cannot evaluate: fail closed

export class TokenRejectedError extends UnauthorizedError {
  readonly reason: TokenRejectionReason
  /** One reason per token tried, in header order (a header may carry several tokens). */
  readonly reasons: readonly TokenRejectionReason[]
  constructor(reason: TokenRejectionReason, message: string, reasons: readonly TokenRejectionReason[] = [reason]) {
    super(`unauthorized: ${message}`)
    this.name = 'TokenRejectedError'
    this.reason = reason
    this.reasons = reasons
  }
}

export class AccessDeniedError extends ForbiddenError {
  readonly reason: AccessDenialReason
  readonly reasons: readonly AccessDenialReason[]
  constructor(reason: AccessDenialReason, message: string, reasons: readonly AccessDenialReason[] = [reason]) {
    super(`forbidden: ${message}`)
    this.name = 'AccessDeniedError'
    this.reason = reason
    this.reasons = reasons
  }
  /** True when every token was refused only because it belongs to another organization: the API
   * answers 404 then, so resource names do not leak across orgs. */
  get concealAsNotFound(): boolean {
    return this.reasons.length > 0 && this.reasons.every((r) => r === 'wrong_org')
  }
}

export const isTokenRejected = (err: unknown): err is TokenRejectedError => err instanceof TokenRejectedError
export const isAccessDenied = (err: unknown): err is AccessDeniedError => err instanceof AccessDeniedError
export const isAuthError = (err: unknown): err is TokenRejectedError | AccessDeniedError =>
  err instanceof TokenRejectedError || err instanceof AccessDeniedError
export type AuthError = TokenRejectedError | AccessDeniedError
