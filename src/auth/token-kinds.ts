import { InvalidArgumentError, parseDurationMs } from '../core/index.js'
import { ACTION_ALL, ACTION_CONTROL, ACTION_READ, parseActions } from './action-mask.js'
import type { Caveat } from './caveats.js'
import type { SigningKeyRecord } from './key-store.js'
import { decodeToken, encodeToken, mintMacaroon, tokenIdOf } from './macaroon.js'

// reference §6 and superfly/docs security/tokens: the token kinds a user creates — deploy
// (one app), org (the whole org), readonly (read the org), machine-exec (run commands on an
// app's Machines) — with a default expiry of 20 years. Each is an Organization caveat plus
// narrower ones; IfPresent lets an app-scoped token still read org-level things (regions, its
// org's app list) while writing only its app.

export const TOKEN_KINDS = ['deploy', 'org', 'readonly', 'machine-exec'] as const
export type TokenKind = (typeof TOKEN_KINDS)[number]

export const DEFAULT_TOKEN_EXPIRY_MS = 20 * 365 * 24 * 3600 * 1000

export interface MintTokenOptions {
  kind: TokenKind
  /** The org's current signing key (KeyStore.currentKey). */
  key: SigningKeyRecord
  /** Required for deploy; optional for machine-exec (all apps of the org otherwise). */
  appId?: string
  /** machine-exec only: limit to one Machine. */
  machineId?: string
  /** machine-exec only: allowed commands (argv prefixes). Empty or absent: any command. */
  commands?: ReadonlyArray<readonly string[]>
  /** How long the token lives: ms or a duration like "720h". Default 20 years. */
  expiry?: number | string
  nowMs?: number
}

export interface MintedToken {
  token: string
  tokenId: string
  kind: TokenKind
  orgId: string
  /** ISO time. */
  expiresAt: string
}

function expiryMs(expiry: number | string | undefined): number {
  if (expiry === undefined) return DEFAULT_TOKEN_EXPIRY_MS
  const ms = typeof expiry === 'number' ? expiry : parseDurationMs(expiry, 'expiry')
  if (!(ms > 0)) throw new InvalidArgumentError('expiry must be a positive duration')
  return ms
}

function validityWindow(nowMs: number, expiry: number | string | undefined): Caveat & { type: 'ValidityWindow' } {
  const nowSeconds = Math.floor(nowMs / 1000)
  return { type: 'ValidityWindow', notBefore: nowSeconds, notAfter: nowSeconds + Math.ceil(expiryMs(expiry) / 1000) }
}

/** The caveats each kind starts with (before its validity window). */
export function caveatsForKind(options: Omit<MintTokenOptions, 'key' | 'nowMs' | 'expiry'> & { orgId: string }): Caveat[] {
  const { kind, orgId, appId, machineId } = options
  switch (kind) {
    case 'org':
      return [{ type: 'Organization', id: orgId, mask: ACTION_ALL }]
    case 'readonly':
      return [{ type: 'Organization', id: orgId, mask: ACTION_READ }]
    case 'deploy':
      if (!appId) throw new InvalidArgumentError('a deploy token is for one app: give --app')
      return [
        { type: 'Organization', id: orgId, mask: ACTION_ALL },
        { type: 'IfPresent', ifs: [{ type: 'Apps', apps: { [appId]: ACTION_ALL } }], else: ACTION_READ },
      ]
    case 'machine-exec': {
      // Exec is a control action that names a command; start/stop name none, so the Commands
      // caveat (inside IfPresent) lets them fall to the else mask, read-only.
      const execMask = ACTION_READ | ACTION_CONTROL
      const commands = options.commands && options.commands.length > 0
        ? options.commands.map((args) => ({ args: [...args], exact: false }))
        : [{ args: [], exact: false }]
      const caveats: Caveat[] = [{ type: 'Organization', id: orgId, mask: execMask }]
      if (appId) caveats.push({ type: 'Apps', apps: { [appId]: execMask } })
      else if (machineId) throw new InvalidArgumentError('a machine-exec token for one Machine also needs its app: give --app')
      if (machineId) caveats.push({ type: 'IfPresent', ifs: [{ type: 'Machines', machines: { [machineId]: execMask } }], else: ACTION_READ })
      caveats.push({ type: 'IfPresent', ifs: [{ type: 'Commands', commands }], else: ACTION_READ })
      return caveats
    }
    default:
      throw new InvalidArgumentError(`unknown token kind ${JSON.stringify(kind)}; use ${TOKEN_KINDS.join(', ')}`)
  }
}

/** Mints a token of one kind, signed by the org's key. */
export function mintToken(options: MintTokenOptions): MintedToken {
  const nowMs = options.nowMs ?? Date.now()
  const orgId = options.key.orgId
  const window = validityWindow(nowMs, options.expiry)
  const caveats = [...caveatsForKind({ ...options, orgId }), window]
  const macaroon = mintMacaroon({ kid: Buffer.from(options.key.kid, 'hex'), key: options.key.secret, caveats })
  return { token: encodeToken(macaroon), tokenId: tokenIdOf(macaroon), kind: options.kind, orgId, expiresAt: new Date(window.notAfter * 1000).toISOString() }
}

export interface ScopeOptions {
  appId?: string
  machineId?: string
  volumeId?: string
  /** Letters r w c d C or *. Default * when a resource is named. */
  actions?: string
  /** ms, or a duration such as "1h". */
  expiry?: number | string
  nowMs?: number
}

/** The caveats for `hangar tokens attenuate --app A --machine M --actions r --expiry 1h`. */
export function scopeCaveats(options: ScopeOptions): Caveat[] {
  const mask = options.actions === undefined ? ACTION_ALL : parseActions(options.actions, '--actions')
  const caveats: Caveat[] = []
  if (options.appId) caveats.push({ type: 'Apps', apps: { [options.appId]: mask } })
  if (options.machineId) caveats.push({ type: 'Machines', machines: { [options.machineId]: mask } })
  if (options.volumeId) caveats.push({ type: 'Volumes', volumes: { [options.volumeId]: mask } })
  if (caveats.length === 0 && options.actions !== undefined) caveats.push({ type: 'Action', mask })
  if (options.expiry !== undefined) caveats.push(validityWindow(options.nowMs ?? Date.now(), options.expiry))
  if (caveats.length === 0) throw new InvalidArgumentError('nothing to narrow: give --app, --machine, --volume, --actions or --expiry')
  return caveats
}

/** The org a token claims to be for (unverified; for the CLI's messages). */
export function claimedOrgId(token: string): string | undefined {
  for (const { caveat } of decodeToken(token).caveats) if (caveat.type === 'Organization') return caveat.id
  return undefined
}
