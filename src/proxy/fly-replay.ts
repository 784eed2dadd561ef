import { InvalidArgumentError, parseDurationMs } from '../core/index.js'

// fly-replay (reference §3.1): a Machine answers with a `fly-replay` header (or a JSON body of
// type application/vnd.fly.replay+json) and the proxy re-delivers the original request where it
// says. Parsing is pure; the data path applies the instruction.

export const REPLAY_CONTENT_TYPE = 'application/vnd.fly.replay+json'
/** reference §3.1: requests over 1 MB cannot be replayed. */
export const MAX_REPLAY_BODY_BYTES = 1024 * 1024
/** A replayed request can be replayed again, but not forever. */
export const MAX_REPLAYS = 10

export interface ReplayInstruction {
  /** Regions in preference order; 'any' matches every region. Empty: no region constraint. */
  regions: string[]
  instance: string
  preferInstance: string
  app: string
  state: string
  elsewhere: boolean
  timeoutMs: number
  fallback: '' | 'force_self' | 'prefer_self'
  transform: { path: string; deleteHeaders: string[]; setHeaders: Array<{ name: string; value: string }> }
}

/** reference §3.1 aliases. Hangar regions are whatever hosts call themselves, so these only
 * expand the Fly region codes; unknown codes match by name. */
const REGION_ALIASES: Record<string, string[]> = {
  apac: ['bom', 'hkg', 'nrt', 'sin', 'syd', 'maa'],
  eu: ['ams', 'arn', 'cdg', 'fra', 'lhr', 'mad', 'otp', 'waw'],
  na: ['atl', 'bos', 'den', 'dfw', 'ewr', 'iad', 'lax', 'mia', 'ord', 'sea', 'sjc', 'yul', 'yyz', 'phx', 'qro'],
  sa: ['bog', 'eze', 'gdl', 'gig', 'gru', 'scl'],
  us: ['atl', 'bos', 'den', 'dfw', 'ewr', 'iad', 'lax', 'mia', 'ord', 'sea', 'sjc', 'phx'],
}
REGION_ALIASES.usa = REGION_ALIASES.us!

function emptyInstruction(): ReplayInstruction {
  return { regions: [], instance: '', preferInstance: '', app: '', state: '', elsewhere: false, timeoutMs: 0, fallback: '', transform: { path: '', deleteHeaders: [], setHeaders: [] } }
}

function splitRegions(value: string): string[] {
  return value.split(',').map((r) => r.trim().toLowerCase()).filter(Boolean)
}

/** Expands aliases into the concrete list of region-name groups, in order. */
export function regionMatchers(regions: string[]): Array<(region: string) => boolean> {
  return regions.map((r) => {
    if (r === 'any') return () => true
    const alias = REGION_ALIASES[r]
    if (alias) return (region: string) => alias.includes(region)
    return (region: string) => region === r
  })
}

function applyField(out: ReplayInstruction, key: string, value: string, field: string): void {
  switch (key) {
    case 'region': out.regions = splitRegions(value); break
    case 'instance': out.instance = value; break
    case 'prefer_instance': out.preferInstance = value; break
    case 'app': out.app = value; break
    case 'state': out.state = value; break
    case 'elsewhere': out.elsewhere = value === 'true' || value === '1'; break
    case 'timeout': out.timeoutMs = parseDurationMs(value, `${field} timeout`); break
    case 'fallback':
      if (value !== 'force_self' && value !== 'prefer_self') throw new InvalidArgumentError(`${field}: fallback must be force_self or prefer_self`)
      out.fallback = value
      break
    default:
      // Unknown fields are ignored (forward compatibility), as Fly's proxy does.
  }
}

/** Parses `fly-replay: region="sjc,any";app=other;timeout=10s;fallback=force_self`. */
export function parseReplayHeader(value: string): ReplayInstruction {
  const out = emptyInstruction()
  // Split on ';' outside quotes.
  const parts: string[] = []
  let current = ''
  let quoted = false
  for (const ch of value) {
    if (ch === '"') quoted = !quoted
    else if (ch === ';' && !quoted) { parts.push(current); current = '' }
    else current += ch
  }
  parts.push(current)
  let any = false
  for (const part of parts) {
    const trimmed = part.trim()
    if (!trimmed) continue
    const eq = trimmed.indexOf('=')
    if (eq <= 0) throw new InvalidArgumentError(`fly-replay: ${JSON.stringify(trimmed)} is not key=value`)
    applyField(out, trimmed.slice(0, eq).trim().toLowerCase(), trimmed.slice(eq + 1).trim(), 'fly-replay')
    any = true
  }
  if (!any) throw new InvalidArgumentError('fly-replay: empty instruction')
  return out
}

/** Parses the JSON form (reference §3.1: the same fields plus transform and cache). */
export function parseReplayJson(body: string): ReplayInstruction {
  let json: unknown
  try { json = JSON.parse(body) } catch { throw new InvalidArgumentError('fly-replay JSON body is not valid JSON') }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new InvalidArgumentError('fly-replay JSON body must be an object')
  const obj = json as Record<string, unknown>
  const out = emptyInstruction()
  for (const key of ['region', 'instance', 'prefer_instance', 'app', 'state', 'elsewhere', 'timeout', 'fallback']) {
    const value = obj[key]
    if (value === undefined || value === null) continue
    if (key === 'region' && Array.isArray(value)) { out.regions = value.map((v) => String(v).toLowerCase()); continue }
    if (typeof value !== 'string' && typeof value !== 'boolean' && typeof value !== 'number') throw new InvalidArgumentError(`fly-replay JSON: ${key} must be a string`)
    applyField(out, key, String(value), 'fly-replay JSON')
  }
  const transform = obj.transform as Record<string, unknown> | undefined
  if (transform !== undefined) {
    if (transform === null || typeof transform !== 'object') throw new InvalidArgumentError('fly-replay JSON: transform must be an object')
    if (transform.path !== undefined) {
      if (typeof transform.path !== 'string' || !transform.path.startsWith('/') || /[\s]/.test(transform.path)) throw new InvalidArgumentError('fly-replay JSON: transform.path must be a path starting with /')
      out.transform.path = transform.path
    }
    if (transform.delete_headers !== undefined) {
      if (!Array.isArray(transform.delete_headers)) throw new InvalidArgumentError('fly-replay JSON: transform.delete_headers must be a list')
      out.transform.deleteHeaders = transform.delete_headers.map((h) => String(h).toLowerCase())
    }
    if (transform.set_headers !== undefined) {
      if (!Array.isArray(transform.set_headers)) throw new InvalidArgumentError('fly-replay JSON: transform.set_headers must be a list')
      for (const h of transform.set_headers as Array<{ name?: unknown; value?: unknown }>) {
        if (typeof h?.name !== 'string' || typeof h.value !== 'string' || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(h.name) || /[\r\n]/.test(h.value)) {
          throw new InvalidArgumentError('fly-replay JSON: transform.set_headers entries need a header name and a string value')
        }
        out.transform.setHeaders.push({ name: h.name, value: h.value })
      }
    }
  }
  return out
}

/** reference §3.1: `fly-replay-src: instance=…;region=…;t=<µs epoch>;state=…`. */
export function formatReplaySrc(instance: string, region: string, state: string, nowMs = Date.now()): string {
  const t = Math.floor(nowMs * 1000)
  return `instance=${instance};region=${region};t=${t}${state ? `;state=${state}` : ''}`
}

/** reference §3.1: the header a fallback request carries. */
export function formatReplayFailed(fields: { instance: string; app: string; region: string; source: string; reason: 'timeout' | 'retries_exhausted' | 'no_candidate'; elapsedMs: number }): string {
  return `instance=${fields.instance};app=${fields.app};region=${fields.region};replay_source=${fields.source};reason=${fields.reason};elapsed_ms=${Math.round(fields.elapsedMs)}`
}

/** Rewrites forwarded header lines for a transform: drops `deleteHeaders`, appends `setHeaders`. */
export function transformHeaderLines(lines: string, transform: ReplayInstruction['transform']): string {
  if (transform.deleteHeaders.length === 0 && transform.setHeaders.length === 0) return lines
  const drop = new Set([...transform.deleteHeaders, ...transform.setHeaders.map((h) => h.name.toLowerCase())])
  let out = ''
  for (const line of lines.split('\r\n')) {
    if (!line) continue
    const name = line.slice(0, line.indexOf(':')).toLowerCase()
    if (!drop.has(name)) out += line + '\r\n'
  }
  for (const h of transform.setHeaders) out += `${h.name}: ${h.value}\r\n`
  return out
}
