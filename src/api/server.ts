import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Bus, SUBJECTS } from '../bus/index.js'
import {
  APP_NAME_PATTERN, HEADERS, isMachineId, InsufficientCapacityError, InvalidArgumentError, NameTakenError, NotFoundError, PreconditionFailedError, UnavailableError,
  WAITABLE_STATES, createLogger, isNotFound, newRequestId, normaliseSignal, type App, type CreateMachineRequest, type ExecRequest,
  type Logger, type LogLine, type Machine, type MachineState, type UpdateMachineRequest, type WaitableState, ALL_STATES,
} from '../core/index.js'
import type { HostInfo } from '../agent/index.js'
import { PlacementMarket, parseRegions, type Placement } from '../placement/index.js'
import { CatalogClient, upsertApp, deleteApp as deleteCatalogApp } from '../catalog/index.js'
import { ApiStore, type AppRow } from './api-store.js'
import type { ApiAuth, ApiAction, Caller } from './api-auth.js'
import { Tenancy } from './auth-tenancy.js'
import { orgRoutes } from './routes-orgs.js'
import { tokenRoutes } from './routes-tokens.js'
import { secretRoutes } from './routes-secrets.js'
import { releaseRoutes } from './routes-releases.js'
import { HostDirectory } from './host-directory.js'
import { Router, createRequestListener, type RequestContext } from './http.js'
import { checkCreateRequest, checkMachineConfig } from './machine-config-rules.js'
import { validateAgainstSpec } from './spec-validator.js'

// The Machines API (Fly's flaps): the paths and JSON of spec/fly-machines-openapi.json. It holds
// no Machine state: every Machine request goes to the agent of the Machine's host over NATS; new
// Machines go to the host that placement picks.

export interface ApiOptions {
  natsUrl: string
  dbPath: string
  host?: string
  port?: number
  region?: string
  logger?: Logger
  /** Default: macaroon tokens (fm2_) verified against the org keys in this API's store. */
  auth?: ApiAuth
  bodyLimitBytes?: number
  /** Names this API process to its peers (revocation acknowledgements). */
  nodeName?: string
  /** A catalog node's API: apps are written there, and Machine → host lookups read from it. */
  catalogUrl?: string
}

export interface RunningApi {
  url: string
  store: ApiStore
  bus: Bus
  hosts: HostDirectory
  /** Orgs, members, signing keys, tokens, revocations and secrets. */
  tenancy: Tenancy
  close(): Promise<void>
}

const DEFAULT_BODY_LIMIT = 1024 * 1024
const AGENT_TIMEOUT_MS = 65_000

export async function startApi(options: ApiOptions): Promise<RunningApi> {
  const logger = options.logger ?? createLogger('api')
  const region = options.region ?? 'local'
  const store = new ApiStore(options.dbPath)
  const bus = await Bus.connect(options.natsUrl, { name: 'api', logger })
  const hosts = new HostDirectory(bus, store, logger)
  await hosts.start()
  const tenancy = new Tenancy({ store, dbPath: options.dbPath, bus, node: options.nodeName ?? `api-${process.pid}-${newRequestId(region).slice(-8)}`, logger })
  const auth = options.auth ?? tenancy.auth
  const catalog = options.catalogUrl ? new CatalogClient(options.catalogUrl) : undefined
  const router = buildRoutes({ store, bus, hosts, auth, logger, tenancy, catalog })
  const server: Server = createServer({ requestTimeout: 120_000, headersTimeout: 20_000, maxHeaderSize: 32 * 1024 }, createRequestListener(router, {
    bodyLimitBytes: options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT, newRequestId: () => newRequestId(region), logger, region,
  }))
  server.keepAliveTimeout = 5_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve())
  })
  const address = server.address() as AddressInfo
  const url = `http://${address.address.includes(':') ? `[${address.address}]` : address.address}:${address.port}`
  logger.info('api listening', { url })
  let closed = false
  return {
    url, store, bus, hosts, tenancy,
    async close() {
      if (closed) return
      closed = true
      await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections() })
      hosts.close()
      await catalog?.close()
      tenancy.close()
      await bus.close()
      store.close()
    },
  }
}

interface Deps { store: ApiStore; bus: Bus; hosts: HostDirectory; auth: ApiAuth; logger: Logger; tenancy: Tenancy; catalog?: CatalogClient }

/** What route modules other than the Machines routes get to work with (orgs, tokens, secrets…). */
export interface ApiContext extends Deps {
  caller(ctx: RequestContext): Promise<Caller>
  appFor(who: Caller, name: string): AppRow
  agentCall<T>(hostId: string, method: string, params: Record<string, unknown>, timeoutMs?: number): Promise<T>
  hostOf(app: AppRow, machineId: string): Promise<string>
}

/** A group of routes registered next to the Machines API's own. */
export type RouteModule = (router: Router, api: ApiContext) => void

/** Route modules of other parts; each adds its paths (one line per module). */
export const ROUTE_MODULES: RouteModule[] = [orgRoutes, tokenRoutes, secretRoutes, releaseRoutes]

function buildRoutes({ store, bus, hosts, auth, logger, tenancy, catalog }: Deps): Router {
  const router = new Router()
  const market = new PlacementMarket(bus, (region) => (region === 'any' ? hosts.alive().length : hosts.alive().filter((h) => h.region === region).length), { logger })

  const caller = (ctx: RequestContext) => auth.authenticate(ctx.header('authorization'))

  /** The app, if the caller's orgs hold it; any other app is "not found" (no name leaks). */
  const appFor = (who: Caller, name: string): AppRow => {
    const app = store.getApp(name)
    if (!app || !who.orgs.includes(app.org)) throw new NotFoundError(`app ${name.slice(0, 80)}`)
    return app
  }

  const appView = (app: AppRow): App => {
    const org = store.getOrg(app.org)
    return {
      id: app.name, name: app.name, machine_count: store.machineCounts(app.name).live, volume_count: 0,
      network: String(app.network), organization: { name: org?.name ?? app.org, slug: app.org }, status: 'deployed',
    }
  }

  const agentCall = async <T>(hostId: string, method: string, params: Record<string, unknown>, timeoutMs = AGENT_TIMEOUT_MS): Promise<T> => {
    try {
      return await bus.call<T>(SUBJECTS.agentRpc(hostId), method, params, timeoutMs)
    } catch (err) {
      if (err instanceof UnavailableError) throw new UnavailableError(`host ${hostId} is unreachable: ${err.message}`)
      throw err
    }
  }

  /** The host holding `machineId` of `app`, or 404. The index is a cache of the agents' change
   * events; a Machine it has not seen yet (an event lost while the API was down) is looked for on
   * every live host. */
  const hostOf = async (app: AppRow, machineId: string): Promise<string> => {
    const entry = store.machineHost(machineId)
    if (entry) {
      if (entry.app !== app.name) throw new NotFoundError(`machine ${machineId.slice(0, 40)}`)
      return entry.hostId
    }
    if (!isMachineId(machineId)) throw new NotFoundError(`machine ${machineId.slice(0, 40)}`)
    // The catalog knows every host's Machines (DESIGN "Catalog": read by the API).
    if (catalog) {
      try {
        const rows = await catalog.queryObjects<{ host_id: string }>(['SELECT host_id FROM machines WHERE id = ? AND app = ?', [machineId, app.name]])
        if (rows[0]) { store.indexMachine(machineId, app.name, rows[0].host_id, 'unknown'); return rows[0].host_id }
      } catch (err) { logger.warn('the catalog did not answer a machine lookup', { err }) }
    }
    for (const host of hosts.alive()) {
      try {
        const machine = await agentCall<Machine>(host.id, 'get', { app: app.name, id: machineId }, 5_000)
        store.indexMachine(machine.id, app.name, host.id, machine.state)
        return host.id
      } catch (err) {
        if (!isNotFound(err)) logger.warn('a host did not answer a machine lookup', { host: host.id, err })
      }
    }
    throw new NotFoundError(`machine ${machineId.slice(0, 40)}`)
  }

  /** The app's secrets for an agent that (re)starts its Machines; never put in a response. */
  const secretsFor = (app: AppRow, request?: { skip_secrets?: boolean; min_secrets_version?: number }): Record<string, string> => {
    if (request?.skip_secrets) return {}
    const version = tenancy.secrets.version(app.name)
    if (request?.min_secrets_version !== undefined && version < request.min_secrets_version) {
      throw new PreconditionFailedError(`app ${app.name} is at secrets version ${version}, below min_secrets_version ${request.min_secrets_version}`)
    }
    return tenancy.secrets.values(app.name)
  }

  /** Every Machine request: authenticate, find the app and host, call the agent. */
  const machineRoute = (method: string, action: Exclude<ApiAction, 'create'>, build: (ctx: RequestContext, app: AppRow) => Promise<Record<string, unknown>> | Record<string, unknown>, shape?: (result: any) => unknown, command?: readonly string[]) =>
    async (ctx: RequestContext) => {
      const who = await caller(ctx)
      const app = appFor(who, ctx.params.app!)
      const machineId = ctx.params.id!
      await who.authorize({ action, org: app.org, app: app.name, machine: machineId, ...(command ? { command } : {}) })
      const hostId = await hostOf(app, machineId)
      const params = { app: app.name, id: machineId, nonce: ctx.header(HEADERS.leaseNonce), ...(await build(ctx, app)) }
      const result = await agentCall<unknown>(hostId, method, params)
      return shape ? shape(result) : result
    }

  // ── apps ──
  router.add('GET', '/v1/apps', async (ctx) => {
    const who = await caller(ctx)
    const orgSlug = ctx.query.get('org_slug')
    if (orgSlug && !who.orgs.includes(orgSlug)) return { apps: [], total_apps: 0 }
    const candidates = orgSlug ? store.listApps(orgSlug) : who.orgs.flatMap((o) => store.listApps(o))
    // Only the apps the caller's tokens may read (an app-scoped token lists its app).
    const readable = await Promise.all(candidates.map((app) => who.allows({ action: 'read', org: app.org, app: app.name })))
    const apps = candidates.filter((_, i) => readable[i]).map(appView)
    return { apps, total_apps: apps.length }
  })

  router.add('POST', '/v1/apps', async (ctx) => {
    const who = await caller(ctx)
    const body = await ctx.body()
    validateAgainstSpec(body, 'CreateAppRequest')
    const request = body as { app_name?: string; name?: string; org_slug?: string; network?: string; primary_region?: string }
    const name = request.app_name ?? request.name
    if (!name) throw new InvalidArgumentError('app_name is required')
    if (!APP_NAME_PATTERN.test(name)) throw new InvalidArgumentError(`app name "${name.slice(0, 70)}" must be lowercase letters, digits and dashes (a DNS label, at most 63 characters)`)
    const orgSlug = request.org_slug ?? who.orgs[0]
    if (!orgSlug || !who.orgs.includes(orgSlug)) throw new NotFoundError(`organization ${String(orgSlug).slice(0, 80)}`)
    await who.authorize({ action: 'create', org: orgSlug, app: name })
    const org = store.getOrg(orgSlug)!
    const app: AppRow = { name, org: orgSlug, network: org.network, primaryRegion: request.primary_region ?? '', createdAt: new Date().toISOString() }
    if (!store.createApp(app)) throw new NameTakenError(`app name "${name}" is already taken`)
    // Proxies learn the app (its org, primary region, hostnames) from the catalog.
    await catalog?.transaction([upsertApp({ name, org: orgSlug, network: String(app.network), primary_region: app.primaryRegion, hostnames: [], created_at: Date.now(), updated_at: Date.now() })]).catch((err) => logger.warn('the catalog did not take the app', { app: name, err }))
    logger.info('app created', { app: name, org: orgSlug })
    return { status: 201, body: appView(app) }
  })

  router.add('GET', '/v1/apps/:app', async (ctx) => {
    const who = await caller(ctx)
    const app = appFor(who, ctx.params.app!)
    await who.authorize({ action: 'read', org: app.org, app: app.name })
    return appView(app)
  })

  router.add('DELETE', '/v1/apps/:app', async (ctx) => {
    const who = await caller(ctx)
    const app = appFor(who, ctx.params.app!)
    await who.authorize({ action: 'delete', org: app.org, app: app.name })
    // Destroy its Machines first, each on its host, then forget the app.
    const failures: string[] = []
    for (const { id: hostId } of hosts.alive()) {
      let machines: Machine[] = []
      try { machines = await agentCall<Machine[]>(hostId, 'list', { app: app.name, filters: {} }) } catch (err) { failures.push(`${hostId}: ${(err as Error).message}`); continue }
      for (const machine of machines) {
        await agentCall(hostId, 'destroy', { app: app.name, id: machine.id, force: true }).catch((err) => { if (!isNotFound(err)) failures.push(`${machine.id}: ${(err as Error).message}`) })
      }
    }
    if (failures.length) throw new UnavailableError(`app ${app.name} not deleted: some Machines could not be destroyed (${failures.slice(0, 3).join('; ')})`)
    store.deleteApp(app.name)
    await catalog?.transaction([deleteCatalogApp(app.name)]).catch((err) => logger.warn('the catalog did not drop the app', { app: app.name, err }))
    return { status: 202, body: {} }
  })

  // ── machines ──
  router.add('GET', '/v1/apps/:app/machines', async (ctx) => {
    const who = await caller(ctx)
    const app = appFor(who, ctx.params.app!)
    await who.authorize({ action: 'read', org: app.org, app: app.name })
    const states = listParam(ctx.query, 'state')
    for (const state of states) if (!(ALL_STATES as readonly string[]).includes(state)) throw new InvalidArgumentError(`state "${state.slice(0, 40)}" is not a machine state`)
    const metadata: Record<string, string> = {}
    for (const [key, value] of ctx.query) if (key.startsWith('metadata.')) metadata[key.slice('metadata.'.length)] = value
    const filters = { states: states as MachineState[], region: ctx.query.get('region') ?? undefined, metadata, includeDeleted: boolParam(ctx.query, 'include_deleted') }
    // Every live host is asked: the agents, not the API's index, know what they hold.
    const results = await Promise.all(hosts.alive().map(async ({ id: hostId }) => {
      try {
        const machines = await agentCall<Machine[]>(hostId, 'list', { app: app.name, filters }, 10_000)
        for (const machine of machines) if (!store.machineHost(machine.id)) store.indexMachine(machine.id, app.name, hostId, machine.state)
        return machines
      } catch (err) { logger.warn('a host did not answer a machine list', { host: hostId, err }); return [] }
    }))
    return results.flat().sort((a, b) => a.created_at.localeCompare(b.created_at))
  })

  router.add('POST', '/v1/apps/:app/machines', async (ctx) => {
    const who = await caller(ctx)
    const app = appFor(who, ctx.params.app!)
    await who.authorize({ action: 'create', org: app.org, app: app.name })
    const body = await ctx.body()
    validateAgainstSpec(body, 'CreateMachineRequest')
    const request = body as CreateMachineRequest
    checkCreateRequest(request)
    const placement = await placeMachine(hosts, market, request)
    const machine = await agentCall<Machine>(placement.hostId, 'create', { app: app.name, org: app.org, network: app.network, primaryRegion: app.primaryRegion || undefined, reservationId: placement.reservationId, request, secrets: secretsFor(app, request) })
    store.indexMachine(machine.id, app.name, placement.hostId, machine.state)
    return machine
  })

  router.add('GET', '/v1/apps/:app/machines/:id', machineRoute('get', 'read', (ctx) => ({ includeLease: boolParam(ctx.query, 'include_leases') })))

  router.add('POST', '/v1/apps/:app/machines/:id', machineRoute('update', 'write', async (ctx, app) => {
    const body = await ctx.body()
    validateAgainstSpec(body, 'UpdateMachineRequest')
    const request = body as UpdateMachineRequest
    checkMachineConfig(request.config)
    return { request, secrets: secretsFor(app, request) }
  }))

  router.add('DELETE', '/v1/apps/:app/machines/:id', machineRoute('destroy', 'delete', (ctx) => ({ force: boolParam(ctx.query, 'force') || boolParam(ctx.query, 'kill') })))

  router.add('POST', '/v1/apps/:app/machines/:id/start', machineRoute('start', 'control', (_ctx, app) => ({ secrets: secretsFor(app) })))

  router.add('POST', '/v1/apps/:app/machines/:id/stop', machineRoute('stop', 'control', async (ctx) => {
    const body = await ctx.body()
    validateAgainstSpec(body, 'StopRequest')
    const { signal, timeout } = body as { signal?: string; timeout?: string | number }
    return { signal: signal === undefined ? undefined : normaliseSignal(signal), timeout }
  }))

  router.add('POST', '/v1/apps/:app/machines/:id/suspend', machineRoute('suspend', 'control', () => ({})))

  router.add('POST', '/v1/apps/:app/machines/:id/restart', machineRoute('restart', 'control', (ctx) => {
    const signal = ctx.query.get('signal')
    const timeout = ctx.query.get('timeout')
    return {
      signal: signal ? normaliseSignal(signal) : undefined,
      timeout: timeout === null ? undefined : /^\d+$/.test(timeout) ? Number(timeout) : timeout,
      forceStop: boolParam(ctx.query, 'force_stop'),
    }
  }))

  router.add('POST', '/v1/apps/:app/machines/:id/signal', machineRoute('signal', 'control', async (ctx) => {
    const body = await ctx.body()
    validateAgainstSpec(body, 'SignalRequest')
    const { signal } = body as { signal?: unknown }
    if (signal === undefined) throw new InvalidArgumentError('signal is required')
    return { signal: normaliseSignal(signal) }
  }))

  router.add('POST', '/v1/apps/:app/machines/:id/cordon', machineRoute('cordon', 'control', () => ({ cordoned: true })))
  router.add('POST', '/v1/apps/:app/machines/:id/uncordon', machineRoute('cordon', 'control', () => ({ cordoned: false })))

  router.add('GET', '/v1/apps/:app/machines/:id/wait', machineRoute('wait', 'read', (ctx) => {
    const states = listParam(ctx.query, 'state')
    for (const state of states) if (!(WAITABLE_STATES as readonly string[]).includes(state)) throw new InvalidArgumentError(`state "${state.slice(0, 40)}" cannot be waited for (use ${WAITABLE_STATES.join(', ')})`)
    const timeoutText = ctx.query.get('timeout')
    let timeoutMs = 60_000
    if (timeoutText !== null) {
      const seconds = Number(timeoutText)
      // reference §1.2: /wait blocks at most 60 s; values outside [1, 60] are invalid_argument.
      if (!Number.isInteger(seconds) || seconds < 1 || seconds > 60) throw new InvalidArgumentError(`timeout must be a whole number of seconds from 1 to 60, got "${timeoutText.slice(0, 20)}"`)
      timeoutMs = seconds * 1000
    }
    return { states: (states.length ? states : ['started']) as WaitableState[], version: ctx.query.get('version') ?? ctx.query.get('instance_id') ?? undefined, timeoutMs }
  }))

  router.add('GET', '/v1/apps/:app/machines/:id/events', machineRoute('events', 'read', (ctx) => {
    const limit = ctx.query.get('limit')
    if (limit !== null && !/^\d+$/.test(limit)) throw new InvalidArgumentError('limit must be a whole number')
    return { limit: limit === null ? 20 : Number(limit) }
  }))

  router.add('GET', '/v1/apps/:app/machines/:id/versions', machineRoute('versions', 'read', () => ({})))

  router.add('GET', '/v1/apps/:app/machines/:id/ps', machineRoute('ps', 'read', () => ({}), (stats: Array<Record<string, number | string>>) => stats))

  router.add('POST', '/v1/apps/:app/machines/:id/exec', async (ctx) => {
    const body = await ctx.body()
    validateAgainstSpec(body, 'MachineExecRequest')
    const request = body as ExecRequest
    if (request.command && (!Array.isArray(request.command) || request.command.length === 0)) throw new InvalidArgumentError('command must be a non-empty array of strings')
    if (!request.command && !request.cmd) throw new InvalidArgumentError('command is required')
    if (request.timeout !== undefined && (request.timeout < 1 || request.timeout > 300)) throw new InvalidArgumentError('timeout must be 1–300 seconds')
    // reference §6: exec is a control action checked with its command (machine-exec tokens).
    const command = request.command?.length ? request.command : ['sh', '-c', request.cmd!]
    return machineRoute('exec', 'control', () => ({ request }), undefined, command)(ctx)
  })

  // ── leases (reference §1.7: fly-go expects the wrapped {status, data}; the spec's Lease is flat — both are sent) ──
  const leaseShape = (lease: { status: string; data: Record<string, unknown> }) => ({ ...lease.data, ...lease })
  router.add('GET', '/v1/apps/:app/machines/:id/lease', machineRoute('getLease', 'read', () => ({}), leaseShape))
  router.add('POST', '/v1/apps/:app/machines/:id/lease', async (ctx) => {
    const body = await ctx.body()
    validateAgainstSpec(body, 'CreateLeaseRequest')
    const { ttl, description } = body as { ttl?: number; description?: string }
    const ttlQuery = ctx.query.get('ttl')
    if (ttlQuery !== null && !/^\d+$/.test(ttlQuery)) throw new InvalidArgumentError('ttl must be a whole number of seconds')
    const handler = machineRoute('acquireLease', 'write', () => ({ ttlSeconds: ttl ?? (ttlQuery === null ? undefined : Number(ttlQuery)), description }), leaseShape)
    return { status: 201, body: await handler(ctx) }
  })
  router.add('DELETE', '/v1/apps/:app/machines/:id/lease', machineRoute('releaseLease', 'write', (ctx) => {
    if (!ctx.header(HEADERS.leaseNonce)) throw new InvalidArgumentError('the fly-machine-lease-nonce header is required to release a lease')
    return {}
  }, () => ({})))

  // ── metadata (reference §1.2: no new version; null or "" removes a key) ──
  router.add('GET', '/v1/apps/:app/machines/:id/metadata', machineRoute('getMetadata', 'read', () => ({})))
  for (const method of ['PUT', 'PATCH'] as const) {
    router.add(method, '/v1/apps/:app/machines/:id/metadata', async (ctx) => {
      const body = await ctx.body()
      validateAgainstSpec(body, 'updateMetadataRequest')
      const { metadata, machine_version: machineVersion } = body as { metadata?: Record<string, string | null>; machine_version?: string }
      if (!metadata) throw new InvalidArgumentError('metadata is required')
      await machineRoute('updateMetadata', 'write', () => ({ changes: metadata, replace: method === 'PUT', machineVersion }))(ctx)
      return { status: 204 }
    })
  }
  router.add('GET', '/v1/apps/:app/machines/:id/metadata/:key', async (ctx) => {
    const metadata = await machineRoute('getMetadata', 'read', () => ({}))(ctx) as Record<string, string>
    const key = ctx.params.key!
    if (!Object.hasOwn(metadata, key)) throw new NotFoundError(`metadata key ${key.slice(0, 64)}`)
    return { value: metadata[key] }
  })
  router.add('POST', '/v1/apps/:app/machines/:id/metadata/:key', async (ctx) => {
    const body = await ctx.body()
    validateAgainstSpec(body, 'upsertMetadataKeyRequest')
    const { value } = body as { value?: string }
    if (typeof value !== 'string') throw new InvalidArgumentError('value is required')
    await machineRoute('updateMetadata', 'write', () => ({ changes: { [ctx.params.key!]: value }, replace: false }))(ctx)
    return { status: 204 }
  })
  router.add('DELETE', '/v1/apps/:app/machines/:id/metadata/:key', async (ctx) => {
    await machineRoute('updateMetadata', 'write', () => ({ changes: { [ctx.params.key!]: null }, replace: false }))(ctx)
    return { status: 204 }
  })

  // ── logs (a Hangar extension: NDJSON of LogLine, live from NATS) ──
  router.add('GET', '/v1/apps/:app/logs', async (ctx) => {
    const who = await caller(ctx)
    const app = appFor(who, ctx.params.app!)
    await who.authorize({ action: 'read', org: app.org, app: app.name })
    return {
      stream: (res: import('node:http').ServerResponse) => {
        res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' })
        res.flushHeaders()
        const stop = bus.subscribe<LogLine>(SUBJECTS.appLogs(app.name), (line) => { res.write(JSON.stringify(line) + '\n') })
        const keepalive = setInterval(() => res.write('\n'), 15_000)
        res.on('close', () => { stop(); clearInterval(keepalive) })
      },
    }
  })

  const api: ApiContext = { store, bus, hosts, auth, logger, tenancy, caller, appFor, agentCall, hostOf }
  for (const register of ROUTE_MODULES) register(router, api)

  // reference §1.2 / §10: a placement simulation — how many Machines of a size each region takes now.
  router.add('POST', '/v1/platform/placements', async (ctx) => {
    const who = await caller(ctx)
    const body = await ctx.body()
    validateAgainstSpec(body, 'main.getPlacementsRequest')
    const request = body as { org_slug?: string; compute?: { cpus?: number; memory_mb?: number }; count?: number; region?: string }
    if (!request.org_slug) throw new InvalidArgumentError('org_slug is required')
    if (!who.orgs.includes(request.org_slug)) throw new NotFoundError(`organization ${request.org_slug.slice(0, 80)}`)
    const count = request.count ?? 0
    if (!Number.isInteger(count) || count < 0 || count > 100_000) throw new InvalidArgumentError('count must be 0–100000')
    // The spec's default compute is a performance-1x (1 CPU, 2048 MB).
    const need = { cpus: request.compute?.cpus ?? 1, memoryMb: request.compute?.memory_mb ?? 2048 }
    return { regions: await market.simulate(request.region, need, count === 0 ? Number.MAX_SAFE_INTEGER : count) }
  })

  // ── platform ──
  router.add('GET', '/v1/platform/regions', async (ctx) => {
    await caller(ctx)
    const regions = hosts.regions().map((code) => ({ code, name: code, latitude: 0, longitude: 0, gateway_available: true, requires_paid_plan: false, deprecated: false, geo_region: 'local' }))
    return { nearest: regions[0]?.code ?? '', regions }
  })

  return router
}

/** Picks the host for a new Machine: hosts in the requested region(s) that fit, best fit first. */
async function placeMachine(hosts: HostDirectory, market: PlacementMarket, request: CreateMachineRequest): Promise<Placement> {
  if (hosts.alive().length === 0) await hosts.refresh(500)
  const need = { cpus: request.config.guest?.cpus ?? 1, memoryMb: request.config.guest?.memory_mb ?? 256 }
  try {
    return await market.place(request.region, need)
  } catch (err) {
    if (!(err instanceof InsufficientCapacityError)) throw err
    const regions = parseRegions(request.region)
    const known = hosts.regions()
    if (regions.every((r) => r !== 'any' && !known.includes(r))) throw new InsufficientCapacityError(`no host in region ${regions.join(', ')} (regions with hosts: ${known.join(', ') || 'none'})`)
    throw err
  }
}

function listParam(query: URLSearchParams, name: string): string[] {
  return query.getAll(name).flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean)
}

function boolParam(query: URLSearchParams, name: string): boolean {
  const value = query.get(name)
  if (value === null) return false
  if (value === '' || value === 'true' || value === '1') return true
  if (value === 'false' || value === '0') return false
  throw new InvalidArgumentError(`${name} must be true or false`)
}
