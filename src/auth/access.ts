import { InternalError } from '../core/index.js'
import { formatActions, isSubsetOf, missingActions, toActionMask, type ActionMask } from './action-mask.js'
import type { Caveat, ResourceMasks } from './caveats.js'
import type { AccessDenialReason } from './errors.js'

// reference §6: the request a token is checked against, after Fly's `flyio.Access{action, orgid,
// appid, machine, volume, mutation, command}`. Every caveat must pass. A resource caveat whose
// resource the request does not name answers "unspecified" (Fly's ErrResourceUnspecified): that is
// a failure like any other, except inside IfPresent, where "all unspecified" selects the else mask.

export interface Access {
  /** What the request does: letters (`"r"`, `"wc"`) or a mask. */
  action: ActionMask | string
  orgId?: string
  /** The id tokens are minted with. Hangar uses the app name (app names are unique). */
  appId?: string
  machineId?: string
  volumeId?: string
  mutation?: string
  /** For exec: the argv to run. */
  command?: readonly string[]
}

export interface NormalisedAccess {
  action: ActionMask
  orgId?: string
  appId?: string
  machineId?: string
  volumeId?: string
  mutation?: string
  command?: readonly string[]
}

/** Checks the request shape itself. A malformed Access is a bug in the caller (the API), not the
 * client's fault, so it is an internal error rather than a 4xx. */
export function normaliseAccess(access: Access): NormalisedAccess {
  const action = toActionMask(access.action, 'access.action')
  if (action === 0) throw new InternalError('access: the action must name at least one of r w c d C')
  if (access.appId !== undefined && access.orgId === undefined) throw new InternalError('access: an app is named without its organization')
  if ((access.machineId !== undefined || access.volumeId !== undefined) && access.appId === undefined) throw new InternalError('access: a machine or volume is named without its app')
  return { ...access, action }
}

export type CaveatOutcome =
  | { readonly kind: 'allow' }
  | { readonly kind: 'unspecified'; readonly message: string }
  | { readonly kind: 'deny'; readonly reason: AccessDenialReason; readonly message: string }
  | { readonly kind: 'expired' | 'not_yet_valid'; readonly message: string }

const ALLOW: CaveatOutcome = { kind: 'allow' }

function actionOutcome(requested: ActionMask, allowed: ActionMask, where: string): CaveatOutcome {
  if (isSubsetOf(requested, allowed)) return ALLOW
  return {
    kind: 'deny',
    reason: 'action_not_allowed',
    message: `the token does not allow ${formatActions(missingActions(requested, allowed))} on ${where} (it allows ${formatActions(allowed) || 'nothing'})`,
  }
}

function resourceOutcome(masks: ResourceMasks, id: string | undefined, kind: 'app' | 'machine' | 'volume', requested: ActionMask): CaveatOutcome {
  if (id === undefined) return { kind: 'unspecified', message: `the token is limited to specific ${kind}s and this request names no ${kind}` }
  const ids = Object.keys(masks)
  if (Object.hasOwn(masks, '')) {
    if (ids.length > 1) return { kind: 'deny', reason: 'unknown_caveat', message: `the token's ${kind} set mixes the wildcard with ids` }
    return actionOutcome(requested, masks['']!, `${kind}s`)
  }
  if (!Object.hasOwn(masks, id)) {
    return { kind: 'deny', reason: `wrong_${kind}` as AccessDenialReason, message: `the token is not valid for ${kind} ${id} (it is limited to ${ids.sort().join(', ')})` }
  }
  return actionOutcome(requested, masks[id]!, `${kind} ${id}`)
}

function commandMatches(allowed: { args: readonly string[]; exact: boolean }, command: readonly string[]): boolean {
  if (allowed.exact ? command.length !== allowed.args.length : command.length < allowed.args.length) return false
  return allowed.args.every((arg, i) => command[i] === arg)
}

/** Evaluates one caveat against a request. `nowSeconds` is unix seconds. 3P caveats pass here:
 * they were settled during verification, where their discharges' caveats joined the list. */
export function evaluateCaveat(caveat: Caveat, access: NormalisedAccess, nowSeconds: number): CaveatOutcome {
  switch (caveat.type) {
    case 'Organization':
      if (access.orgId === undefined) return { kind: 'unspecified', message: 'the token is limited to one organization and this request names none' }
      if (access.orgId !== caveat.id) return { kind: 'deny', reason: 'wrong_org', message: `the token is not valid for organization ${access.orgId}` }
      return actionOutcome(access.action, caveat.mask, `organization ${caveat.id}`)
    case 'Apps': return resourceOutcome(caveat.apps, access.appId, 'app', access.action)
    case 'Machines': return resourceOutcome(caveat.machines, access.machineId, 'machine', access.action)
    case 'Volumes': return resourceOutcome(caveat.volumes, access.volumeId, 'volume', access.action)
    case 'ValidityWindow':
      if (nowSeconds < caveat.notBefore) return { kind: 'not_yet_valid', message: `the token is not valid before ${new Date(caveat.notBefore * 1000).toISOString()}` }
      if (nowSeconds > caveat.notAfter) return { kind: 'expired', message: `the token expired at ${new Date(caveat.notAfter * 1000).toISOString()}` }
      return ALLOW
    case 'Mutations':
      if (access.mutation === undefined) return { kind: 'unspecified', message: 'the token is limited to specific mutations and this request names none' }
      if (!caveat.mutations.includes(access.mutation)) return { kind: 'deny', reason: 'mutation_not_allowed', message: `the token does not allow the mutation ${access.mutation}` }
      return ALLOW
    case 'Action':
      return actionOutcome(access.action, caveat.mask, 'any resource')
    case 'Commands':
      if (access.command === undefined) return { kind: 'unspecified', message: 'the token is limited to running specific commands and this request runs none' }
      if (!caveat.commands.some((c) => commandMatches(c, access.command!))) {
        return { kind: 'deny', reason: 'command_not_allowed', message: `the token does not allow running ${JSON.stringify(access.command.join(' '))}` }
      }
      return ALLOW
    case 'IfPresent': {
      // reference §6 / Fly's resset.IfPresent: if any inner caveat concerns the request, all of
      // them must allow it; if none does, only the else actions are allowed.
      let relevant = false
      let firstFailure: CaveatOutcome | undefined
      for (const inner of caveat.ifs) {
        const outcome = evaluateCaveat(inner, access, nowSeconds)
        if (outcome.kind === 'unspecified') continue
        relevant = true
        if (outcome.kind !== 'allow' && firstFailure === undefined) firstFailure = outcome
      }
      if (relevant) return firstFailure ?? ALLOW
      if (isSubsetOf(access.action, caveat.else)) return ALLOW
      return {
        kind: 'deny',
        reason: 'action_not_allowed',
        message: `the token allows only ${formatActions(caveat.else) || 'no actions'} outside the resources it names (this request needs ${formatActions(access.action)})`,
      }
    }
    case 'ThirdParty':
      return ALLOW
    case 'Unknown':
      return { kind: 'deny', reason: 'unknown_caveat', message: `the token carries a caveat of type ${caveat.typeNumber} that this server cannot check` }
  }
}

export type CaveatSetOutcome =
  | { readonly kind: 'allow' }
  | { readonly kind: 'deny'; readonly reason: AccessDenialReason; readonly message: string }
  | { readonly kind: 'expired' | 'not_yet_valid'; readonly message: string }

/** Every caveat must allow the request. A top-level "unspecified" is a denial. Time-window
 * failures win over other failures: an expired token should say it is expired. */
export function evaluateCaveats(caveats: readonly Caveat[], access: NormalisedAccess, nowSeconds: number): CaveatSetOutcome {
  let denial: CaveatSetOutcome | undefined
  for (const caveat of caveats) {
    const outcome = evaluateCaveat(caveat, access, nowSeconds)
    switch (outcome.kind) {
      case 'allow': continue
      case 'expired': case 'not_yet_valid': return outcome
      case 'unspecified': denial ??= { kind: 'deny', reason: 'resource_unspecified', message: outcome.message }; break
      // A wrong organization decides the answer (the API hides other orgs' resources behind 404).
      case 'deny': if (denial === undefined || outcome.reason === 'wrong_org') denial = outcome; break
    }
  }
  return denial ?? { kind: 'allow' }
}

