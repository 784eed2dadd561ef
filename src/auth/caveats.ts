import { InvalidArgumentError } from '../core/index.js'
import { formatActions, isActionMask, parseActions, type ActionMask } from './action-mask.js'
import { MsgpackFrameError, encodeArrayHeader, pack, wireInt } from './msgpack-frames.js'

// reference §6: the caveat vocabulary of superfly/macaroon, with its numeric type ids so that a
// token reads the same way Fly's do: Organization(0), Volumes(2), Apps(3), ValidityWindow(4),
// Mutations(6), Machines(7), 3P(11), IfPresent(13). Caveats Hangar adds itself (Action, Commands)
// sit in the user-defined range [2^48, 2^64-2] that the macaroon library reserves for
// implementations that do not integrate with fly.io.
//
// On the wire a caveat is the MessagePack array [type, body], each body an array (Fly encodes
// structs as arrays). A token's caveat list is the flat array [type0, body0, type1, body1, ...].
// Resource-set maps are written with sorted keys so that one caveat has one encoding.

export const CAVEAT_TYPES = {
  Organization: 0,
  Volumes: 2,
  Apps: 3,
  ValidityWindow: 4,
  Mutations: 6,
  Machines: 7,
  ThirdParty: 11,
  IfPresent: 13,
  Action: 2 ** 48 + 1,
  Commands: 2 ** 48 + 2,
} as const

export type CaveatName = keyof typeof CAVEAT_TYPES

/** Access per resource id. The empty id `""` alone means "every resource of this kind" (the
 * resource-set wildcard; Fly's zero value). */
export type ResourceMasks = Readonly<Record<string, ActionMask>>

export interface OrganizationCaveat { type: 'Organization'; id: string; mask: ActionMask }
export interface AppsCaveat { type: 'Apps'; apps: ResourceMasks }
export interface MachinesCaveat { type: 'Machines'; machines: ResourceMasks }
export interface VolumesCaveat { type: 'Volumes'; volumes: ResourceMasks }
/** Unix seconds, inclusive on both ends. */
export interface ValidityWindowCaveat { type: 'ValidityWindow'; notBefore: number; notAfter: number }
export interface MutationsCaveat { type: 'Mutations'; mutations: readonly string[] }
/** Applies `ifs` when any of them concerns the request; otherwise only the `else` actions pass. */
export interface IfPresentCaveat { type: 'IfPresent'; ifs: readonly Caveat[]; else: ActionMask }
/** reference §6 3P: `(location, VID, CID)`; VID = Enc(tail, r), CID = Enc(KA, r + caveats). */
export interface ThirdPartyCaveat { type: 'ThirdParty'; location: string; verifierKey: Uint8Array; ticket: Uint8Array }
/** Limits the actions of every request, whatever it names. */
export interface ActionCaveat { type: 'Action'; mask: ActionMask }
/** Commands an exec request may run: an exact argv, or an argv prefix (`exact: false`). */
export interface CommandsCaveat { type: 'Commands'; commands: ReadonlyArray<{ args: readonly string[]; exact: boolean }> }
/** A caveat of a type this server does not know. It is kept (so attenuation preserves it) and
 * always fails evaluation: fail closed. */
export interface UnknownCaveat { type: 'Unknown'; typeNumber: number; body: unknown }

export type Caveat =
  | OrganizationCaveat | AppsCaveat | MachinesCaveat | VolumesCaveat | ValidityWindowCaveat
  | MutationsCaveat | IfPresentCaveat | ThirdPartyCaveat | ActionCaveat | CommandsCaveat | UnknownCaveat

const MAX_IF_PRESENT_DEPTH = 4

// ---------------------------------------------------------------- encoding

function sortedMap(masks: ResourceMasks): Map<string, number> {
  return new Map(Object.keys(masks).sort().map((k) => [k, masks[k]!]))
}

function caveatBody(caveat: Caveat, depth: number): unknown {
  switch (caveat.type) {
    case 'Organization': return [caveat.id, caveat.mask]
    case 'Apps': return [sortedMap(caveat.apps)]
    case 'Machines': return [sortedMap(caveat.machines)]
    case 'Volumes': return [sortedMap(caveat.volumes)]
    case 'ValidityWindow': return [wireInt(caveat.notBefore), wireInt(caveat.notAfter)]
    case 'Mutations': return [[...caveat.mutations]]
    case 'IfPresent': {
      if (depth >= MAX_IF_PRESENT_DEPTH) throw new InvalidArgumentError(`IfPresent caveats nest at most ${MAX_IF_PRESENT_DEPTH} deep`)
      return [caveat.ifs.flatMap((c) => [wireInt(typeNumberOf(c)), caveatBody(c, depth + 1)]), caveat.else]
    }
    case 'ThirdParty': return [caveat.location, Buffer.from(caveat.verifierKey), Buffer.from(caveat.ticket)]
    case 'Action': return [caveat.mask]
    case 'Commands': return [caveat.commands.map((c) => [[...c.args], c.exact])]
    case 'Unknown': return caveat.body
  }
}

function typeNumberOf(caveat: Caveat): number {
  return caveat.type === 'Unknown' ? caveat.typeNumber : CAVEAT_TYPES[caveat.type]
}

/** The exact bytes a caveat is signed as: the MessagePack array [type, body]. */
export function packCaveat(caveat: Caveat): Buffer {
  validateCaveat(caveat)
  return pack([wireInt(typeNumberOf(caveat)), caveatBody(caveat, 0)])
}

/** Packs a caveat list as the flat array [type, body, ...], reusing each caveat's packed bytes. */
export function packCaveatList(packed: readonly Uint8Array[]): Buffer {
  // Each packed caveat starts with the fixarray(2) tag 0x92; the flat list omits it.
  return Buffer.concat([encodeArrayHeader(packed.length * 2), ...packed.map((p) => p.subarray(1))])
}

// ---------------------------------------------------------------- decoding

class CaveatShapeError extends MsgpackFrameError {}

function fail(message: string): never {
  throw new CaveatShapeError(message)
}

function asArray(value: unknown, what: string, length?: number): unknown[] {
  if (!Array.isArray(value)) fail(`${what}: expected an array`)
  if (length !== undefined && value.length !== length) fail(`${what}: expected ${length} element(s), got ${value.length}`)
  return value
}

function asString(value: unknown, what: string): string {
  if (typeof value !== 'string') fail(`${what}: expected a string`)
  return value
}

function asInteger(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) fail(`${what}: expected an integer`)
  return value
}

function asMask(value: unknown, what: string): ActionMask {
  if (!isActionMask(value)) fail(`${what}: expected an action mask`)
  return value
}

function asBytes(value: unknown, what: string): Uint8Array {
  if (!(value instanceof Uint8Array)) fail(`${what}: expected bytes`)
  return value
}

function asResourceMasks(value: unknown, what: string): ResourceMasks {
  if (!(value instanceof Map)) fail(`${what}: expected a map of id to actions`)
  const entries: Array<[string, ActionMask]> = []
  for (const [k, v] of value) entries.push([asString(k, `${what} key`), asMask(v, `${what}[${String(k)}]`)])
  return Object.fromEntries(entries)
}

/** Turns a decoded [type, body] pair into a Caveat. Throws MsgpackFrameError on a bad shape. */
export function caveatFromWire(typeValue: unknown, body: unknown, depth = 0): Caveat {
  const typeNumber = asInteger(typeValue, 'caveat type')
  switch (typeNumber) {
    case CAVEAT_TYPES.Organization: {
      const [id, mask] = asArray(body, 'Organization', 2)
      return { type: 'Organization', id: asString(id, 'Organization id'), mask: asMask(mask, 'Organization mask') }
    }
    case CAVEAT_TYPES.Apps: return { type: 'Apps', apps: asResourceMasks(asArray(body, 'Apps', 1)[0], 'Apps') }
    case CAVEAT_TYPES.Machines: return { type: 'Machines', machines: asResourceMasks(asArray(body, 'Machines', 1)[0], 'Machines') }
    case CAVEAT_TYPES.Volumes: return { type: 'Volumes', volumes: asResourceMasks(asArray(body, 'Volumes', 1)[0], 'Volumes') }
    case CAVEAT_TYPES.ValidityWindow: {
      const [notBefore, notAfter] = asArray(body, 'ValidityWindow', 2)
      return { type: 'ValidityWindow', notBefore: asInteger(notBefore, 'ValidityWindow not_before'), notAfter: asInteger(notAfter, 'ValidityWindow not_after') }
    }
    case CAVEAT_TYPES.Mutations: {
      const list = asArray(asArray(body, 'Mutations', 1)[0], 'Mutations list')
      return { type: 'Mutations', mutations: list.map((m) => asString(m, 'mutation')) }
    }
    case CAVEAT_TYPES.IfPresent: {
      if (depth >= MAX_IF_PRESENT_DEPTH) fail(`IfPresent caveats nest at most ${MAX_IF_PRESENT_DEPTH} deep`)
      const [flat, elseMask] = asArray(body, 'IfPresent', 2)
      return { type: 'IfPresent', ifs: caveatsFromFlatList(flat, depth + 1), else: asMask(elseMask, 'IfPresent else') }
    }
    case CAVEAT_TYPES.ThirdParty: {
      const [location, verifierKey, ticket] = asArray(body, '3P', 3)
      return { type: 'ThirdParty', location: asString(location, '3P location'), verifierKey: asBytes(verifierKey, '3P verifier key'), ticket: asBytes(ticket, '3P ticket') }
    }
    case CAVEAT_TYPES.Action: return { type: 'Action', mask: asMask(asArray(body, 'Action', 1)[0], 'Action mask') }
    case CAVEAT_TYPES.Commands: {
      const list = asArray(asArray(body, 'Commands', 1)[0], 'Commands list')
      return {
        type: 'Commands',
        commands: list.map((entry) => {
          const [args, exact] = asArray(entry, 'command', 2)
          if (typeof exact !== 'boolean') fail('command exact: expected a boolean')
          return { args: asArray(args, 'command args').map((a) => asString(a, 'command arg')), exact }
        }),
      }
    }
    default:
      return { type: 'Unknown', typeNumber, body }
  }
}

/** Decodes a flat [type, body, ...] list (as found inside IfPresent and 3P tickets). */
export function caveatsFromFlatList(value: unknown, depth = 0): Caveat[] {
  const flat = asArray(value, 'caveat list')
  if (flat.length % 2 !== 0) fail('caveat list: odd number of elements')
  const caveats: Caveat[] = []
  for (let i = 0; i < flat.length; i += 2) caveats.push(caveatFromWire(flat[i], flat[i + 1], depth))
  return caveats
}

// ---------------------------------------------------------------- validation of caveats we write

function validateResourceMasks(masks: ResourceMasks, what: string): void {
  if (masks === null || typeof masks !== 'object') throw new InvalidArgumentError(`${what}: expected a map of id to actions`)
  const keys = Object.keys(masks)
  if (keys.length === 0) throw new InvalidArgumentError(`${what}: name at least one id`)
  if (keys.includes('') && keys.length > 1) throw new InvalidArgumentError(`${what}: the wildcard "" must be the only id`)
  for (const k of keys) if (!isActionMask(masks[k])) throw new InvalidArgumentError(`${what}[${k}]: not an action mask`)
}

/** Rejects caveats that could never be encoded or evaluated sensibly, before they are signed. */
export function validateCaveat(caveat: Caveat, depth = 0): void {
  switch (caveat.type) {
    case 'Organization':
      if (typeof caveat.id !== 'string' || caveat.id === '') throw new InvalidArgumentError('Organization caveat: id must be a non-empty string')
      if (!isActionMask(caveat.mask)) throw new InvalidArgumentError('Organization caveat: mask is not an action mask')
      return
    case 'Apps': return validateResourceMasks(caveat.apps, 'Apps caveat')
    case 'Machines': return validateResourceMasks(caveat.machines, 'Machines caveat')
    case 'Volumes': return validateResourceMasks(caveat.volumes, 'Volumes caveat')
    case 'ValidityWindow':
      if (!Number.isSafeInteger(caveat.notBefore) || !Number.isSafeInteger(caveat.notAfter)) throw new InvalidArgumentError('ValidityWindow caveat: not_before and not_after must be integer unix seconds')
      if (caveat.notAfter < caveat.notBefore) throw new InvalidArgumentError('ValidityWindow caveat: not_after is before not_before')
      return
    case 'Mutations':
      if (!Array.isArray(caveat.mutations) || caveat.mutations.some((m) => typeof m !== 'string')) throw new InvalidArgumentError('Mutations caveat: expected a list of mutation names')
      return
    case 'IfPresent':
      if (depth >= MAX_IF_PRESENT_DEPTH) throw new InvalidArgumentError(`IfPresent caveats nest at most ${MAX_IF_PRESENT_DEPTH} deep`)
      if (!Array.isArray(caveat.ifs) || caveat.ifs.length === 0) throw new InvalidArgumentError('IfPresent caveat: ifs must list at least one caveat')
      if (!isActionMask(caveat.else)) throw new InvalidArgumentError('IfPresent caveat: else is not an action mask')
      for (const inner of caveat.ifs) {
        if (inner.type === 'ThirdParty' || inner.type === 'Unknown') throw new InvalidArgumentError(`IfPresent caveat: a ${inner.type} caveat cannot be nested`)
        validateCaveat(inner, depth + 1)
      }
      return
    case 'ThirdParty':
      if (typeof caveat.location !== 'string' || caveat.location === '') throw new InvalidArgumentError('3P caveat: location must be a non-empty string')
      return
    case 'Action':
      if (!isActionMask(caveat.mask)) throw new InvalidArgumentError('Action caveat: mask is not an action mask')
      return
    case 'Commands':
      if (!Array.isArray(caveat.commands) || caveat.commands.length === 0) throw new InvalidArgumentError('Commands caveat: list at least one command')
      for (const c of caveat.commands) {
        if (!Array.isArray(c.args) || c.args.some((a: unknown) => typeof a !== 'string') || typeof c.exact !== 'boolean') throw new InvalidArgumentError('Commands caveat: each command is {args: string[], exact: boolean}')
      }
      return
    case 'Unknown':
      return
  }
}

// ---------------------------------------------------------------- JSON form

// reference §6: the JSON form is {"type": "Organization", "body": {"id": ..., "mask": "w"}}, the
// shape `flyctl tokens debug` prints and `tokens attenuate -f caveats.json` reads.

export interface CaveatJSON { type: string; body: unknown }

function masksToJSON(masks: ResourceMasks): Record<string, string> {
  return Object.fromEntries(Object.keys(masks).sort().map((k) => [k, formatActions(masks[k]!)]))
}

export function caveatToJSON(caveat: Caveat): CaveatJSON {
  switch (caveat.type) {
    case 'Organization': return { type: 'Organization', body: { id: caveat.id, mask: formatActions(caveat.mask) } }
    case 'Apps': return { type: 'Apps', body: { apps: masksToJSON(caveat.apps) } }
    case 'Machines': return { type: 'Machines', body: { machines: masksToJSON(caveat.machines) } }
    case 'Volumes': return { type: 'Volumes', body: { volumes: masksToJSON(caveat.volumes) } }
    case 'ValidityWindow': return { type: 'ValidityWindow', body: { not_before: caveat.notBefore, not_after: caveat.notAfter } }
    case 'Mutations': return { type: 'Mutations', body: { mutations: [...caveat.mutations] } }
    case 'IfPresent': return { type: 'IfPresent', body: { ifs: caveat.ifs.map(caveatToJSON), else: formatActions(caveat.else) } }
    case 'ThirdParty': return { type: '3P', body: { location: caveat.location, ticket_bytes: caveat.ticket.length } }
    case 'Action': return { type: 'Action', body: formatActions(caveat.mask) }
    case 'Commands': return { type: 'Commands', body: caveat.commands.map((c) => ({ args: [...c.args], exact: c.exact })) }
    case 'Unknown': return { type: String(caveat.typeNumber), body: null }
  }
}

function jsonObject(value: unknown, what: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidArgumentError(`${what}: expected an object`)
  return value as Record<string, unknown>
}

function masksFromJSON(value: unknown, what: string): ResourceMasks {
  const obj = jsonObject(value, what)
  return Object.fromEntries(Object.keys(obj).map((k) => [k, parseActions(obj[k] as string, `${what}.${k}`)]))
}

/** Reads the JSON form back (for `hangar tokens attenuate -f caveats.json`). 3P caveats cannot be
 * written this way: they carry sealed keys (use addThirdPartyCaveat). */
export function caveatFromJSON(json: unknown, depth = 0): Caveat {
  const { type, body } = jsonObject(json, 'caveat')
  let caveat: Caveat
  switch (type) {
    case 'Organization': {
      const b = jsonObject(body, 'Organization body')
      caveat = { type: 'Organization', id: String(b.id), mask: parseActions(b.mask as string, 'Organization.mask') }
      break
    }
    case 'Apps': caveat = { type: 'Apps', apps: masksFromJSON(jsonObject(body, 'Apps body').apps, 'Apps.apps') }; break
    case 'Machines': caveat = { type: 'Machines', machines: masksFromJSON(jsonObject(body, 'Machines body').machines, 'Machines.machines') }; break
    case 'Volumes': caveat = { type: 'Volumes', volumes: masksFromJSON(jsonObject(body, 'Volumes body').volumes, 'Volumes.volumes') }; break
    case 'ValidityWindow': {
      const b = jsonObject(body, 'ValidityWindow body')
      caveat = { type: 'ValidityWindow', notBefore: Number(b.not_before), notAfter: Number(b.not_after) }
      break
    }
    case 'Mutations': caveat = { type: 'Mutations', mutations: (jsonObject(body, 'Mutations body').mutations as string[]) ?? [] }; break
    case 'IfPresent': {
      const b = jsonObject(body, 'IfPresent body')
      if (!Array.isArray(b.ifs)) throw new InvalidArgumentError('IfPresent.ifs: expected a list of caveats')
      caveat = { type: 'IfPresent', ifs: b.ifs.map((c) => caveatFromJSON(c, depth + 1)), else: parseActions(b.else as string, 'IfPresent.else') }
      break
    }
    case 'Action': caveat = { type: 'Action', mask: parseActions(body as string, 'Action') }; break
    case 'Commands': {
      if (!Array.isArray(body)) throw new InvalidArgumentError('Commands body: expected a list of {args, exact}')
      caveat = { type: 'Commands', commands: body.map((c) => { const o = jsonObject(c, 'command'); return { args: o.args as string[], exact: o.exact === true } }) }
      break
    }
    default:
      throw new InvalidArgumentError(`caveat type ${JSON.stringify(type)} is not one Hangar can add (Organization, Apps, Machines, Volumes, ValidityWindow, Mutations, IfPresent, Action, Commands)`)
  }
  validateCaveat(caveat, depth)
  return caveat
}

/** A short human description, for `hangar tokens debug` and error messages. */
export function describeCaveat(caveat: Caveat): string {
  const masks = (m: ResourceMasks) => Object.keys(m).sort().map((k) => `${k === '' ? '*' : k}:${formatActions(m[k]!) || '-'}`).join(', ')
  switch (caveat.type) {
    case 'Organization': return `organization ${caveat.id} (${formatActions(caveat.mask) || 'no actions'})`
    case 'Apps': return `apps {${masks(caveat.apps)}}`
    case 'Machines': return `machines {${masks(caveat.machines)}}`
    case 'Volumes': return `volumes {${masks(caveat.volumes)}}`
    case 'ValidityWindow': return `valid ${new Date(caveat.notBefore * 1000).toISOString()} to ${new Date(caveat.notAfter * 1000).toISOString()}`
    case 'Mutations': return `mutations [${caveat.mutations.join(', ')}]`
    case 'IfPresent': return `if present (${caveat.ifs.map(describeCaveat).join('; ')}) else ${formatActions(caveat.else) || 'nothing'}`
    case 'ThirdParty': return `third party ${caveat.location}`
    case 'Action': return `actions ${formatActions(caveat.mask) || 'none'}`
    case 'Commands': return `commands [${caveat.commands.map((c) => c.args.join(' ') + (c.exact ? '' : ' …')).join(', ')}]`
    case 'Unknown': return `unknown caveat type ${caveat.typeNumber}`
  }
}
