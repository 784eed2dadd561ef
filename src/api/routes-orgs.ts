import { ForbiddenError, InvalidArgumentError, NotFoundError } from '../core/index.js'
import type { Caller } from './api-auth.js'
import type { OrgRow } from './api-store.js'
import { MEMBER_ROLES, type MemberRole } from './auth-store.js'
import type { RouteModule } from './server.js'

// Organizations and their members (issue 5). Hangar has no user accounts: a member is a name in
// an org holding the tokens issued to it, and removing the member revokes those tokens. Any org's
// admin (an org token) may create a new org and gets the new org's first org token back.

export interface OrgView { slug: string; name: string; network: number; created_at: string; members: number }

export const orgRoutes: RouteModule = (router, api) => {
  const orgView = (org: OrgRow): OrgView => ({ slug: org.slug, name: org.name, network: org.network, created_at: org.createdAt, members: api.tenancy.keys.memberCount(org.slug) })

  /** The org if the caller holds a token for it; any other org is "not found". */
  const orgFor = (who: Caller, slug: string): OrgRow => {
    const org = who.orgs.includes(slug) ? api.store.getOrg(slug) : undefined
    if (!org) throw new NotFoundError(`organization ${slug.slice(0, 80)}`)
    return org
  }

  router.add('GET', '/v1/orgs', async (ctx) => {
    const who = await api.caller(ctx)
    const orgs: OrgView[] = []
    for (const slug of who.orgs) {
      const org = api.store.getOrg(slug)
      if (org && await who.allows({ action: 'read', org: slug })) orgs.push(orgView(org))
    }
    return { orgs: orgs.sort((a, b) => a.slug.localeCompare(b.slug)) }
  })

  router.add('POST', '/v1/orgs', async (ctx) => {
    const who = await api.caller(ctx)
    const body = await ctx.body() as { slug?: unknown; name?: unknown; member?: unknown }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidArgumentError('expected an object {slug, name?, member?}')
    for (const key of Object.keys(body)) if (!['slug', 'name', 'member'].includes(key)) throw new InvalidArgumentError(`${key.slice(0, 40)}: unknown field`)
    if (typeof body.slug !== 'string') throw new InvalidArgumentError('slug is required')
    if (body.name !== undefined && (typeof body.name !== 'string' || body.name.length > 200)) throw new InvalidArgumentError('name must be a string of at most 200 characters')
    if (body.member !== undefined && typeof body.member !== 'string') throw new InvalidArgumentError('member must be a string')
    // Only an admin somewhere (a token that may do everything in one of its orgs) makes orgs.
    let admin = false
    for (const org of who.orgs) if (await who.allows({ action: 'create', org }) && await who.allows({ action: 'write', org })) { admin = true; break }
    if (!admin) throw new ForbiddenError('forbidden: creating an organization needs an org token (deploy, readonly and machine-exec tokens cannot)')
    const { org, token } = api.tenancy.createOrg(body.slug, { name: body.name as string | undefined, member: body.member as string | undefined })
    api.logger.info('organization created', { org: org.slug })
    return { status: 201, body: { ...orgView(org), token: token.token, token_id: token.tokenId, expires_at: token.expiresAt } }
  })

  router.add('GET', '/v1/orgs/:org', async (ctx) => {
    const who = await api.caller(ctx)
    const org = orgFor(who, ctx.params.org!)
    await who.authorize({ action: 'read', org: org.slug })
    return orgView(org)
  })

  router.add('GET', '/v1/orgs/:org/members', async (ctx) => {
    const who = await api.caller(ctx)
    const org = orgFor(who, ctx.params.org!)
    await who.authorize({ action: 'read', org: org.slug })
    return { members: api.tenancy.keys.members(org.slug).map((m) => ({ name: m.name, role: m.role, created_at: m.createdAt })) }
  })

  router.add('POST', '/v1/orgs/:org/members', async (ctx) => {
    const who = await api.caller(ctx)
    const org = orgFor(who, ctx.params.org!)
    const body = await ctx.body() as { name?: unknown; role?: unknown }
    if (typeof body?.name !== 'string') throw new InvalidArgumentError('name is required')
    const role = (body.role ?? 'member') as MemberRole
    if (!MEMBER_ROLES.includes(role)) throw new InvalidArgumentError(`role must be one of ${MEMBER_ROLES.join(', ')}`)
    await who.authorize({ action: 'create', org: org.slug })
    await who.authorize({ action: 'write', org: org.slug })
    const token = api.tenancy.addMember(org.slug, body.name, role)
    return { status: 201, body: { name: body.name, role, token: token.token, token_id: token.tokenId, expires_at: token.expiresAt } }
  })

  router.add('DELETE', '/v1/orgs/:org/members/:name', async (ctx) => {
    const who = await api.caller(ctx)
    const org = orgFor(who, ctx.params.org!)
    await who.authorize({ action: 'delete', org: org.slug })
    const name = ctx.params.name!
    const tokenIds = api.tenancy.keys.tokensOfMember(org.slug, name)
    if (!api.tenancy.keys.removeMember(org.slug, name)) throw new NotFoundError(`member ${name.slice(0, 80)}`)
    for (const id of tokenIds) await api.tenancy.revoke(id, org.slug)
    return { removed: name, revoked_tokens: tokenIds.length }
  })
}
