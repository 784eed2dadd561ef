import { NotFoundError } from '../core/index.js'
import { isAccessDenied, isAuthError, type Access, type TokenVerifier, type VerifiedToken } from '../auth/index.js'
import type { ApiAccess, ApiAction, ApiAuth, Caller } from './api-auth.js'

// The API's ApiAuth over macaroons (reference §6, issue 5). Every request's Authorization header
// (`FlyV1 fm2_…[,fm2_…]` or `Bearer fm2_…`) is verified once; each access the route makes is then
// checked against the tokens' caveats: org, app (Hangar's appId is the app name), Machine, the
// action letters r w c d C, and for exec the command. A token refused only because the resource
// is another org's gets 404, exactly like a resource that does not exist, so names never leak.

export const ACTION_LETTERS: Record<ApiAction, string> = { read: 'r', write: 'w', create: 'c', delete: 'd', control: 'C' }

export function toAuthAccess(access: ApiAccess): Access {
  return {
    action: ACTION_LETTERS[access.action],
    orgId: access.org,
    ...(access.app !== undefined ? { appId: access.app } : {}),
    ...(access.machine !== undefined ? { machineId: access.machine } : {}),
    ...(access.command !== undefined ? { command: access.command } : {}),
  }
}

/** A caller holding verified macaroons. */
export class MacaroonCaller implements Caller {
  readonly orgs: string[]

  constructor(readonly tokens: readonly VerifiedToken[], private readonly verifier: TokenVerifier) {
    this.orgs = [...new Set(tokens.map((t) => t.orgId))]
  }

  async authorize(access: ApiAccess): Promise<void> {
    try {
      this.verifier.authorize(this.tokens, toAuthAccess(access))
    } catch (err) {
      if (isAccessDenied(err) && err.concealAsNotFound) throw new NotFoundError(access.app !== undefined ? `app ${access.app.slice(0, 80)}` : `organization ${access.org.slice(0, 80)}`)
      throw err
    }
  }

  async allows(access: ApiAccess): Promise<boolean> {
    try {
      this.verifier.authorize(this.tokens, toAuthAccess(access))
      return true
    } catch (err) {
      if (isAuthError(err)) return false
      throw err
    }
  }
}

export class MacaroonAuth implements ApiAuth {
  constructor(private readonly verifier: TokenVerifier) {}

  async authenticate(authorizationHeader: string | undefined): Promise<MacaroonCaller> {
    return new MacaroonCaller(await this.verifier.verifyHeader(authorizationHeader), this.verifier)
  }
}

export const isMacaroonCaller = (who: Caller): who is MacaroonCaller => who instanceof MacaroonCaller
