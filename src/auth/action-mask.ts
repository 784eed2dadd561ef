import { InvalidArgumentError } from '../core/index.js'

// reference §6: action masks combine r w c d C (C = control, i.e. start/stop) and `*` (all).
// As in Fly's resset, a mask is a small bit set so "is the request's action a subset of what the
// caveat allows" is one AND; its text form is the letters in this fixed order.

export type ActionMask = number

export const ACTION_READ = 1 << 0
export const ACTION_WRITE = 1 << 1
export const ACTION_CREATE = 1 << 2
export const ACTION_DELETE = 1 << 3
export const ACTION_CONTROL = 1 << 4
export const ACTION_NONE = 0
export const ACTION_ALL = ACTION_READ | ACTION_WRITE | ACTION_CREATE | ACTION_DELETE | ACTION_CONTROL

const LETTERS: ReadonlyArray<readonly [string, number]> = [
  ['r', ACTION_READ],
  ['w', ACTION_WRITE],
  ['c', ACTION_CREATE],
  ['d', ACTION_DELETE],
  ['C', ACTION_CONTROL],
]

/** Parses `"rw"`, `"rwcdC"`, `"*"` or `""` (nothing allowed). Letters are case-sensitive: `c` is
 * create and `C` is control, as in Fly's tokens. */
export function parseActions(text: string, field = 'actions'): ActionMask {
  if (typeof text !== 'string') throw new InvalidArgumentError(`${field}: expected a string of action letters (r w c d C or *)`)
  if (text === '*') return ACTION_ALL
  let mask = 0
  for (const ch of text) {
    const entry = LETTERS.find(([letter]) => letter === ch)
    if (!entry) throw new InvalidArgumentError(`${field}: "${ch}" is not an action; use r (read), w (write), c (create), d (delete), C (control: start/stop) or *`)
    mask |= entry[1]
  }
  return mask
}

/** `"*"` for every action, otherwise the letters in r w c d C order (`""` for none). */
export function formatActions(mask: ActionMask): string {
  if ((mask & ACTION_ALL) === ACTION_ALL) return '*'
  return LETTERS.filter(([, bit]) => (mask & bit) !== 0).map(([letter]) => letter).join('')
}

export function isActionMask(value: unknown): value is ActionMask {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= ACTION_ALL
}

export function isSubsetOf(requested: ActionMask, allowed: ActionMask): boolean {
  return (requested & ~allowed) === 0
}

/** The actions in `requested` that `allowed` does not grant, for error messages. */
export function missingActions(requested: ActionMask, allowed: ActionMask): ActionMask {
  return requested & ~allowed
}

/** Accepts either form: a mask number or the letters. */
export function toActionMask(value: ActionMask | string, field = 'action'): ActionMask {
  if (typeof value === 'string') return parseActions(value, field)
  if (!isActionMask(value)) throw new InvalidArgumentError(`${field}: ${String(value)} is not an action mask`)
  return value
}
