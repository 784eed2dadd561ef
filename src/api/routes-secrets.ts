import { ForbiddenError, InvalidArgumentError, NotFoundError } from '../core/index.js'
import type { RequestContext } from './http.js'
import { checkSecretName } from './auth-secret-store.js'
import type { RouteModule } from './server.js'

// App secrets with Fly's paths and shapes (spec `AppSecrets`, `AppSecretsUpdateRequest`,
// `SetAppSecretRequest`): names, digests and dates go out; values only come in. Machines get the
// values as env when they start (the create/update/start routes hand them to the agent). Rolling
// the app's Machines after a change is the client's job, as with flyctl (`hangar secrets set`).

export const secretRoutes: RouteModule = (router, api) => {
  const appOf = async (ctx: RequestContext, action: 'read' | 'write') => {
    const who = await api.caller(ctx)
    const app = api.appFor(who, ctx.params.app!)
    await who.authorize({ action, org: app.org, app: app.name })
    return app
  }
  const refuseValues = (ctx: RequestContext) => {
    const show = ctx.query.get('show_secrets')
    if (show !== null && show !== 'false' && show !== '0') throw new ForbiddenError('forbidden: Hangar never returns secret values; set them again to change them')
  }

  router.add('GET', '/v1/apps/:app/secrets', async (ctx) => {
    const app = await appOf(ctx, 'read')
    refuseValues(ctx)
    return { secrets: api.tenancy.secrets.list(app.name), version: api.tenancy.secrets.version(app.name) }
  })

  router.add('POST', '/v1/apps/:app/secrets', async (ctx) => {
    const app = await appOf(ctx, 'write')
    const body = await ctx.body() as { values?: unknown }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidArgumentError('expected {"values": {"NAME": "value" | null}}')
    for (const key of Object.keys(body)) if (key !== 'values') throw new InvalidArgumentError(`${key.slice(0, 40)}: unknown field`)
    const values = body.values
    if (typeof values !== 'object' || values === null || Array.isArray(values)) throw new InvalidArgumentError('values must be an object of NAME → value (null unsets)')
    for (const [name, value] of Object.entries(values)) {
      if (value !== null && typeof value !== 'string') throw new InvalidArgumentError(`values.${checkSecretName(name)}: expected a string or null`)
    }
    const version = api.tenancy.secrets.update(app.name, values as Record<string, string | null>)
    api.logger.info('secrets changed', { app: app.name, names: Object.keys(values), version })
    return { secrets: api.tenancy.secrets.list(app.name), version, Version: version }
  })

  router.add('GET', '/v1/apps/:app/secrets/:name', async (ctx) => {
    const app = await appOf(ctx, 'read')
    refuseValues(ctx)
    const secret = api.tenancy.secrets.get(app.name, ctx.params.name!)
    if (!secret) throw new NotFoundError(`secret ${ctx.params.name!.slice(0, 80)}`)
    return secret
  })

  router.add('POST', '/v1/apps/:app/secrets/:name', async (ctx) => {
    const app = await appOf(ctx, 'write')
    const name = checkSecretName(ctx.params.name)
    const body = await ctx.body() as { value?: unknown }
    if (typeof body?.value !== 'string') throw new InvalidArgumentError('value is required (a string)')
    const version = api.tenancy.secrets.update(app.name, { [name]: body.value })
    return { status: 201, body: { ...api.tenancy.secrets.get(app.name, name)!, version, Version: version } }
  })

  router.add('DELETE', '/v1/apps/:app/secrets/:name', async (ctx) => {
    const app = await appOf(ctx, 'write')
    const name = ctx.params.name!
    if (!api.tenancy.secrets.get(app.name, name)) throw new NotFoundError(`secret ${name.slice(0, 80)}`)
    const version = api.tenancy.secrets.update(app.name, { [name]: null })
    return { version, Version: version }
  })
}
