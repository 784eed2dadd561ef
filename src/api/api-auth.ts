import { UnauthorizedError } from '../core/index.js'
import type { ApiStore } from './api-store.js'

// Who is calling, and which orgs they may touch. Every route asks `authenticate` first and then
// checks the org of the app it touches against the answer; a resource of another org is a 404,
// not a 403, so names do not leak (issue 5's tenancy rule, kept from the start).

export type ApiAction = 'read' | 'write' | 'create' | 'delete' | 'control'

/** One thing a request does: the action, the org, and where named the app, Machine and (exec)
 * the command — reference §6's `flyio.Access`. */
export interface ApiAccess { action: ApiAction; org: string; app?: string; machine?: string; command?: readonly string[] }

export interface Caller {
  /** The orgs this caller may act in. */
  orgs: string[]
  /** Checks one access in depth (token caveats); throws ForbiddenError (or NotFoundError for
   * another org's resource) when not allowed. */
  authorize(access: ApiAccess): Promise<void>
  /** The same check as a yes/no, for filtering lists. */
  allows(access: ApiAccess): Promise<boolean>
}

export interface ApiAuth {
  authenticate(authorizationHeader: string | undefined): Promise<Caller>
}

/** Pulls the token out of `Authorization: Bearer <t>` or `FlyV1 <t>` (reference §1.1). */
export function tokenFromHeader(header: string | undefined): string {
  if (!header) throw new UnauthorizedError()
  const match = /^(Bearer|FlyV1)\s+(\S.*)$/i.exec(header.trim())
  if (!match) throw new UnauthorizedError('unauthorized: the Authorization header must be "Bearer <token>" or "FlyV1 <token>"')
  return match[2]!.trim()
}

/** The bearer tokens `hangar up` makes: each belongs to one org and may do everything in it. */
export class StaticTokenAuth implements ApiAuth {
  constructor(private readonly store: ApiStore) {}

  async authenticate(header: string | undefined): Promise<Caller> {
    const token = tokenFromHeader(header)
    const org = this.store.staticTokenOrg(token)
    if (!org) throw new UnauthorizedError('unauthorized: the token is not valid')
    return { orgs: [org], authorize: async () => undefined, allows: async (access) => access.org === org }
  }
}
