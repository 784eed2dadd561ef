import { TokenRejectedError } from './errors.js'
import { TOKEN_PREFIX } from './macaroon.js'

// reference §1.1 and §6: fly-go sends `Authorization: FlyV1 fm2_…,fm2_…` when it holds macaroons
// and `Bearer …` otherwise; Fly's services also read comma-joined tokens after Bearer. A header may
// carry permission tokens and the discharges of their third-party caveats, in any order.

export const MAX_TOKENS_PER_HEADER = 16

/** Splits an Authorization header value into `fm2_` tokens. Throws TokenRejectedError `missing`
 * (no header / no token), `malformed` (unknown scheme, too many tokens) or `wrong_prefix`. */
export function parseAuthorizationHeader(value: string | readonly string[] | undefined | null): string[] {
  if (Array.isArray(value)) {
    if (value.length > 1) throw new TokenRejectedError('malformed', 'send one Authorization header')
    value = value[0]
  }
  if (typeof value !== 'string' || value.trim() === '') {
    throw new TokenRejectedError('missing', 'a token is required (Authorization: FlyV1 fm2_… or Authorization: Bearer fm2_…)')
  }
  const match = /^\s*(\S+)\s+([\s\S]*)$/.exec(value)
  if (!match) throw new TokenRejectedError('malformed', 'the Authorization header must be "FlyV1 <tokens>" or "Bearer <tokens>"')
  const scheme = match[1]!.toLowerCase()
  if (scheme !== 'flyv1' && scheme !== 'bearer') {
    throw new TokenRejectedError('malformed', `the Authorization scheme ${JSON.stringify(match[1]!.slice(0, 20))} is not supported; use FlyV1 or Bearer`)
  }
  const tokens = match[2]!.split(',').map((t) => t.trim()).filter((t) => t !== '')
  if (tokens.length === 0) throw new TokenRejectedError('missing', `the Authorization header names no token after ${match[1]}`)
  if (tokens.length > MAX_TOKENS_PER_HEADER) throw new TokenRejectedError('malformed', `at most ${MAX_TOKENS_PER_HEADER} tokens may be sent in one header`)
  for (const token of tokens) {
    if (!token.startsWith(TOKEN_PREFIX)) {
      throw new TokenRejectedError('wrong_prefix', `every token must start with ${TOKEN_PREFIX}`)
    }
  }
  return tokens
}

/** What the CLI sends: `FlyV1 fm2_…,fm2_…`. */
export function formatAuthorizationHeader(tokens: readonly string[]): string {
  return `FlyV1 ${tokens.join(',')}`
}
