import { InvalidArgumentError, NotFoundError, isHangarError } from '../core/index.js'
import { TOKEN_KINDS, tokenId, verifyTokens, type Caveat, type TokenKind } from '../auth/index.js'
import type { ApiAction, Caller } from './api-auth.js'
import { isMacaroonCaller } from './auth-macaroon.js'
import type { IssuedTokenRow } from './auth-store.js'
import type { RouteModule } from './server.js'

// Tokens (issue 5, reference §6 token kinds): create deploy / org / readonly / machine-exec
// tokens, list what an org issued (ids and scope, never a token), revoke on every API node, and
// Fly's `/v1/tokens/current` and `/v1/apps/{app}/deploy_token`. Nobody mints a token that can
// do more than their own: the caller must be allowed every action the new token allows.

const ALL_ACTIONS: ApiAction[] = ['read', 'write', 'create', 'delete', 'control']
const TOKEN_FIELDS = ['kind', 'org_slug', 'app_name', 'machine_id', 'commands', 'expiry', 'name']

export function issuedTokenView(row: IssuedTokenRow) {
  return {
    id: row.id, kind: row.kind, org_slug: row.org, name: row.name, created_at: row.createdAt, expires_at: row.expiresAt,
    ...(row.app ? { app_name: row.app } : {}), ...(row.machine ? { machine_id: row.machine } : {}), ...(row.member ? { member: row.member } : {}),
    revoked: row.revokedAt !== undefined, ...(row.revokedAt ? { revoked_at: row.revokedAt } : {}),
  }
}

async function requireActions(who: Caller, actions: ApiAction[], scope: { org: string; app?: string; machine?: string }): Promise<void> {
  for (const action of actions) await who.authorize({ action, ...scope })
}

function parseCommands(value: unknown): string[][] | undefined {
  if (value === undefined) return undefined
  const list = Array.isArray(value) && value.every((v) => typeof v === 'string') ? [value as string[]] : value
  if (!Array.isArray(list) || !list.every((c) => Array.isArray(c) && c.length > 0 && c.every((a) => typeof a === 'string'))) {
    throw new InvalidArgumentError('commands must be a list of argv lists, e.g. [["ls", "-l"]]')
  }
  return list as string[][]
}

/** The apps (and Machine) a verified token is confined to, for /v1/tokens/current. */
function scopeOf(caveats: readonly Caveat[]): { apps: string[]; machine?: string } {
  const apps = new Set<string>()
  let machine: string | undefined
  const visit = (caveat: Caveat) => {
    if (caveat.type === 'Apps') for (const app of Object.keys(caveat.apps)) if (app) apps.add(app)
    if (caveat.type === 'Machines') machine ??= Object.keys(caveat.machines).find(Boolean)
    if (caveat.type === 'IfPresent') caveat.ifs.forEach(visit)
  }
  caveats.forEach(visit)
  return { apps: [...apps].sort(), ...(machine ? { machine } : {}) }
}

export const tokenRoutes: RouteModule = (router, api) => {
  const orgOf = (who: Caller, slug: unknown): string => {
    if (slug === undefined) {
      if (who.orgs.length === 1) return who.orgs[0]!
      throw new InvalidArgumentError(`org_slug is required: the token(s) sent are for ${who.orgs.length} organizations`)
    }
    if (typeof slug !== 'string' || !who.orgs.includes(slug) || !api.store.getOrg(slug)) throw new NotFoundError(`organization ${String(slug).slice(0, 80)}`)
    return slug
  }

  router.add('POST', '/v1/tokens', async (ctx) => {
    const who = await api.caller(ctx)
    const body = await ctx.body() as Record<string, unknown>
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidArgumentError('expected an object {kind, org_slug?, app_name?, machine_id?, commands?, expiry?, name?}')
    for (const key of Object.keys(body)) if (!TOKEN_FIELDS.includes(key)) throw new InvalidArgumentError(`${key.slice(0, 40)}: unknown field`)
    const kind = body.kind as TokenKind
    if (!TOKEN_KINDS.includes(kind)) throw new InvalidArgumentError(`kind must be one of ${TOKEN_KINDS.join(', ')}`)
    for (const field of ['app_name', 'machine_id', 'expiry', 'name']) if (body[field] !== undefined && typeof body[field] !== 'string') throw new InvalidArgumentError(`${field} must be a string`)
    const org = orgOf(who, body.org_slug)
    const appName = body.app_name as string | undefined
    const machine = body.machine_id as string | undefined
    const commands = parseCommands(body.commands)
    if (kind === 'deploy' && !appName) throw new InvalidArgumentError('a deploy token is for one app: give app_name')
    if ((kind === 'org' || kind === 'readonly') && (appName || machine || commands)) throw new InvalidArgumentError(`a ${kind} token covers the whole organization: app_name, machine_id and commands do not apply`)
    if (kind === 'deploy' && (machine || commands)) throw new InvalidArgumentError('machine_id and commands apply to machine-exec tokens only')
    const app = appName ? api.appFor(who, appName) : undefined
    if (app && app.org !== org) throw new NotFoundError(`app ${appName!.slice(0, 80)}`)
    if (machine && !app) throw new InvalidArgumentError('a machine-exec token for one Machine also needs app_name')
    if (app && machine) await api.hostOf(app, machine)
    // No escalation: the caller must hold every action the new token grants, where it grants it.
    switch (kind) {
      case 'org': await requireActions(who, ALL_ACTIONS, { org }); break
      case 'readonly': await requireActions(who, ['read'], { org }); break
      case 'deploy': await requireActions(who, ALL_ACTIONS, { org, app: app!.name }); break
      case 'machine-exec': await requireActions(who, ['read', 'control'], { org, ...(app ? { app: app.name } : {}), ...(machine ? { machine } : {}) }); break
    }
    const minted = api.tenancy.issueToken({ org, kind, app: app?.name, machine, commands, expiry: body.expiry as string | undefined, name: body.name as string | undefined })
    api.logger.info('token issued', { org, kind, app: app?.name, id: minted.tokenId })
    return { status: 201, body: { token: minted.token, id: minted.tokenId, kind, org_slug: org, ...(app ? { app_name: app.name } : {}), ...(machine ? { machine_id: machine } : {}), expires_at: minted.expiresAt } }
  })

  router.add('GET', '/v1/tokens', async (ctx) => {
    const who = await api.caller(ctx)
    const org = orgOf(who, ctx.query.get('org_slug') ?? undefined)
    await who.authorize({ action: 'read', org })
    return { tokens: api.tenancy.keys.issuedTokens(org).map(issuedTokenView) }
  })

  router.add('POST', '/v1/tokens/revoke', async (ctx) => {
    const who = await api.caller(ctx)
    const body = await ctx.body() as { token_id?: unknown; token?: unknown }
    if (typeof body !== 'object' || body === null) throw new InvalidArgumentError('expected {token_id} or {token}')
    let id: string
    let org: string
    if (typeof body.token === 'string') {
      // Whoever holds a token may revoke it (and every token attenuated from it).
      try {
        id = tokenId(body.token)
      } catch (err) {
        if (isHangarError(err)) throw new InvalidArgumentError(`the token to revoke is not a Hangar token: ${err.message.replace(/^unauthorized: /, '')}`)
        throw err
      }
      const [verified] = await verifyTokens([body.token], { keys: api.tenancy.keys }).catch((err) => {
        if (isHangarError(err)) throw new InvalidArgumentError(`the token to revoke does not verify here: ${err.message.replace(/^unauthorized: /, '')}`)
        throw err
      })
      org = verified!.orgId
    } else if (typeof body.token_id === 'string') {
      id = body.token_id
      const issued = /^[0-9a-f]{32}$/.test(id) ? api.tenancy.keys.issuedToken(id) : undefined
      if (!issued || !who.orgs.includes(issued.org)) throw new NotFoundError(`token ${id.slice(0, 40)}`)
      org = issued.org
      const own = isMacaroonCaller(who) && who.tokens.some((t) => t.tokenId === id)
      if (!own) await who.authorize({ action: 'delete', org })
    } else {
      throw new InvalidArgumentError('give token_id (from `hangar tokens list`) or the token itself')
    }
    const nodes = await api.tenancy.revoke(id, org)
    api.logger.info('token revoked', { org, id, nodes: nodes.length })
    return { revoked: id, org_slug: org, nodes }
  })

  router.add('GET', '/v1/tokens/current', async (ctx) => {
    const who = await api.caller(ctx)
    if (!isMacaroonCaller(who)) return { tokens: who.orgs.map((org) => ({ org_slug: org, organization: org, apps: [] })) }
    return {
      tokens: who.tokens.map((t) => {
        const scope = scopeOf(t.caveats)
        return { token_id: t.tokenId, org_slug: t.orgId, organization: api.store.getOrg(t.orgId)?.name ?? t.orgId, apps: scope.apps, ...(scope.machine ? { restricted_to_machine: scope.machine } : {}) }
      }),
    }
  })

  // Fly's spec: POST /v1/apps/{app}/deploy_token {expiry} → a deploy token for the app.
  router.add('POST', '/v1/apps/:app/deploy_token', async (ctx) => {
    const who = await api.caller(ctx)
    const app = api.appFor(who, ctx.params.app!)
    const body = await ctx.body() as { expiry?: unknown }
    if (body.expiry !== undefined && typeof body.expiry !== 'string') throw new InvalidArgumentError('expiry must be a duration string such as "720h"')
    await requireActions(who, ALL_ACTIONS, { org: app.org, app: app.name })
    const minted = api.tenancy.issueToken({ org: app.org, kind: 'deploy', app: app.name, expiry: body.expiry as string | undefined, name: `deploy token for ${app.name}` })
    return { token: minted.token, id: minted.tokenId, expires_at: minted.expiresAt }
  })
}
