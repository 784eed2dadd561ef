import { InvalidArgumentError } from './errors.js'

// reference §1.3: durations are Go duration strings ("15s", "1m30s", "800ms"); fly-go also
// accepts an integer meaning nanoseconds. Both parse to milliseconds here.

const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
const PART = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/y

export function parseDurationMs(value: unknown, field: string): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new InvalidArgumentError(`${field}: duration must be a non-negative number of nanoseconds or a string like "10s", got ${value}`)
    return value / 1e6
  }
  if (typeof value !== 'string' || value.length === 0 || value.length > 64) {
    throw new InvalidArgumentError(`${field}: duration must be a string like "10s" or "800ms"`)
  }
  if (value === '0') return 0
  let total = 0
  PART.lastIndex = 0
  let matched = 0
  while (PART.lastIndex < value.length) {
    const start = PART.lastIndex
    const m = PART.exec(value)
    if (!m || m.index !== start) throw new InvalidArgumentError(`${field}: "${value}" is not a duration (use forms like "10s", "1m30s", "800ms")`)
    total += Number(m[1]) * UNIT_MS[m[2]!]!
    matched++
  }
  if (matched === 0) throw new InvalidArgumentError(`${field}: "${value}" is not a duration`)
  return total
}

export function formatDurationMs(ms: number): string {
  if (ms % 1000 === 0) return `${ms / 1000}s`
  return `${ms}ms`
}
