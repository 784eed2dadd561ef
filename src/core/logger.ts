// One JSON object per line on stderr (the supervisor sends each component's stderr to its log
// file). Keys that can carry secrets are redacted before anything is written: tokens, secrets
// and env values must never reach a log (issue: "No secrets in logs, errors or the catalog").

export type LogLevel = 'debug' | 'info' | 'warn' | 'error'
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 }

const SECRET_KEY = /token|secret|password|authorization|macaroon|private_key|^env$|^key$/i

export function redact(value: unknown, depth = 0): unknown {
  if (depth > 6 || value === null || typeof value !== 'object') return value
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1))
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEY.test(k) ? '[redacted]' : redact(v, depth + 1)
  return out
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
  child(fields: Record<string, unknown>): Logger
}

export function createLogger(component: string, options: { level?: LogLevel; write?: (line: string) => void; base?: Record<string, unknown> } = {}): Logger {
  const minLevel = LEVELS[options.level ?? ((process.env.HANGAR_LOG_LEVEL as LogLevel | undefined) ?? 'info')] ?? LEVELS.info
  const write = options.write ?? ((line: string) => process.stderr.write(line))
  const base = { component, ...options.base }
  const log = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (LEVELS[level] < minLevel) return
    const entry: Record<string, unknown> = { time: new Date().toISOString(), level, ...base, msg }
    if (fields) {
      for (const [k, v] of Object.entries(redact(fields) as Record<string, unknown>)) {
        entry[k] = v instanceof Error ? { message: v.message, code: (v as { code?: unknown }).code } : v
      }
    }
    write(JSON.stringify(entry) + '\n')
  }
  return {
    debug: (m, f) => log('debug', m, f),
    info: (m, f) => log('info', m, f),
    warn: (m, f) => log('warn', m, f),
    error: (m, f) => log('error', m, f),
    child: (fields) => createLogger(component, { ...options, base: { ...options.base, ...fields } }),
  }
}

export const silentLogger: Logger = {
  debug() {}, info() {}, warn() {}, error() {},
  child() { return silentLogger },
}
