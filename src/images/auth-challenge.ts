// `WWW-Authenticate` challenges (RFC 7235 §4.1) as registries send them:
//   Basic realm="basic-realm"
//   Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"
// Parameters are token=token or token="quoted string"; quoted values may hold commas (a scope
// with "pull,push"), and one header may carry several challenges.

export interface AuthChallenge {
  /** Lowercased: 'basic', 'bearer', ... */
  scheme: string
  /** Parameter names lowercased, values unquoted. */
  params: Record<string, string>
}

const TOKEN_CHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/

export function parseAuthChallenges(header: string | string[] | undefined): AuthChallenge[] {
  if (header === undefined) return []
  const text = Array.isArray(header) ? header.join(', ') : header
  const out: AuthChallenge[] = []
  let i = 0
  const skipSpace = () => { while (i < text.length && (text[i] === ' ' || text[i] === '\t')) i++ }
  const readToken = () => { const start = i; while (i < text.length && TOKEN_CHAR.test(text[i]!)) i++; return text.slice(start, i) }

  while (i < text.length) {
    skipSpace()
    if (text[i] === ',') { i++; continue }
    const scheme = readToken()
    if (scheme === '') { i++; continue } // garbage: skip a character and resynchronise
    const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: {} }
    out.push(challenge)
    // Parameters until the next challenge (a token followed by a space and not by '=').
    for (;;) {
      skipSpace()
      const save = i
      const name = readToken()
      if (name === '') break
      skipSpace()
      if (text[i] !== '=') { i = save; break } // the start of the next challenge
      i++
      skipSpace()
      let value = ''
      if (text[i] === '"') {
        i++
        while (i < text.length && text[i] !== '"') {
          if (text[i] === '\\' && i + 1 < text.length) i++
          value += text[i]
          i++
        }
        i++ // closing quote
      } else {
        value = readToken()
      }
      challenge.params[name.toLowerCase()] = value
      skipSpace()
      if (text[i] === ',') i++
    }
  }
  return out
}
