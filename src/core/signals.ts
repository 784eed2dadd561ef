import { constants } from 'node:os'
import { InvalidArgumentError } from './errors.js'

// reference §1.2: the spec sends signals by name ("SIGTERM"); fly-go's Kill sends {"signal": 9}.
// Both are accepted and normalised to the name.

const SIGNAL_NUMBERS = constants.signals as Record<string, number>

export function normaliseSignal(value: unknown, field = 'signal'): string {
  if (typeof value === 'number' && Number.isInteger(value)) {
    const name = Object.keys(SIGNAL_NUMBERS).find((n) => SIGNAL_NUMBERS[n] === value && n !== 'SIGIOT' && n !== 'SIGPOLL')
    if (!name) throw new InvalidArgumentError(`${field}: ${value} is not a signal number`)
    return name
  }
  if (typeof value === 'string') {
    const upper = value.toUpperCase()
    const name = upper.startsWith('SIG') ? upper : `SIG${upper}`
    if (name in SIGNAL_NUMBERS) return name
    if (/^\d+$/.test(value)) return normaliseSignal(Number(value), field)
  }
  throw new InvalidArgumentError(`${field}: ${JSON.stringify(value)} is not a signal (use a name like "SIGTERM" or a number like 15)`)
}

export function signalNumber(name: string): number {
  const n = SIGNAL_NUMBERS[name]
  if (n === undefined) throw new InvalidArgumentError(`unknown signal ${name}`)
  return n
}
