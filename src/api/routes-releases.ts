import type Database from 'better-sqlite3'
import { InvalidArgumentError, NotFoundError, newUlid } from '../core/index.js'
import type { RouteModule } from './server.js'

// Releases (issue 5): each deploy records one, numbered per app, with its image, strategy and
// outcome; the deployer (client side, src/deploy) creates it `running` and marks it `complete`
// or `failed`. Machines carry `fly_release_id` / `fly_release_version` in their metadata
// (reference §1.5), so `hangar status` can tell which release each one runs.

export const RELEASE_STATUSES = ['pending', 'running', 'complete', 'failed', 'rolled_back'] as const
export type ReleaseStatus = (typeof RELEASE_STATUSES)[number]

export interface Release {
  id: string
  app: string
  version: number
  image: string
  status: ReleaseStatus
  strategy: string
  description: string
  error?: string
  created_at: string
  updated_at: string
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS releases (
  id TEXT PRIMARY KEY, app TEXT NOT NULL, version INTEGER NOT NULL, image TEXT NOT NULL, status TEXT NOT NULL,
  strategy TEXT NOT NULL, description TEXT NOT NULL DEFAULT '', error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
  UNIQUE (app, version)
);
`

interface ReleaseRow { id: string; app: string; version: number; image: string; status: string; strategy: string; description: string; error: string | null; created_at: string; updated_at: string }
const toRelease = (r: ReleaseRow): Release => ({
  id: r.id, app: r.app, version: r.version, image: r.image, status: r.status as ReleaseStatus, strategy: r.strategy,
  description: r.description, ...(r.error ? { error: r.error } : {}), created_at: r.created_at, updated_at: r.updated_at,
})

export class ReleaseStore {
  constructor(private readonly db: Database.Database) {
    db.exec(SCHEMA)
  }

  create(app: string, fields: { image: string; strategy: string; description?: string; status?: ReleaseStatus }): Release {
    const now = new Date().toISOString()
    return this.db.transaction(() => {
      const { next } = this.db.prepare('SELECT COALESCE(MAX(version), 0) + 1 AS next FROM releases WHERE app = ?').get(app) as { next: number }
      const release: Release = { id: newUlid(), app, version: next, image: fields.image, status: fields.status ?? 'running', strategy: fields.strategy, description: fields.description ?? '', created_at: now, updated_at: now }
      this.db.prepare('INSERT INTO releases (id, app, version, image, status, strategy, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(release.id, app, release.version, release.image, release.status, release.strategy, release.description, now, now)
      return release
    })()
  }

  list(app: string, limit = 50): Release[] {
    return (this.db.prepare('SELECT * FROM releases WHERE app = ? ORDER BY version DESC LIMIT ?').all(app, limit) as ReleaseRow[]).map(toRelease)
  }

  get(app: string, id: string): Release | undefined {
    const row = this.db.prepare('SELECT * FROM releases WHERE app = ? AND (id = ? OR CAST(version AS TEXT) = ?)').get(app, id, id) as ReleaseRow | undefined
    return row ? toRelease(row) : undefined
  }

  setStatus(app: string, id: string, status: ReleaseStatus, error?: string): Release | undefined {
    this.db.prepare('UPDATE releases SET status = ?, error = ?, updated_at = ? WHERE app = ? AND id = ?').run(status, error ?? null, new Date().toISOString(), app, id)
    return this.get(app, id)
  }

  deleteApp(app: string): void {
    this.db.prepare('DELETE FROM releases WHERE app = ?').run(app)
  }
}

const releaseStores = new WeakMap<Database.Database, ReleaseStore>()

export const releaseRoutes: RouteModule = (router, api) => {
  let releases = releaseStores.get(api.store.db)
  if (!releases) {
    const store = new ReleaseStore(api.store.db)
    releases = store
    releaseStores.set(api.store.db, store)
    api.store.onAppDeleted((app) => store.deleteApp(app))
  }
  const store = releases

  router.add('GET', '/v1/apps/:app/releases', async (ctx) => {
    const who = await api.caller(ctx)
    const app = api.appFor(who, ctx.params.app!)
    await who.authorize({ action: 'read', org: app.org, app: app.name })
    const limitText = ctx.query.get('limit')
    if (limitText !== null && !/^\d{1,3}$/.test(limitText)) throw new InvalidArgumentError('limit must be a whole number up to 999')
    return { releases: store.list(app.name, limitText === null ? 50 : Number(limitText)) }
  })

  router.add('GET', '/v1/apps/:app/releases/:id', async (ctx) => {
    const who = await api.caller(ctx)
    const app = api.appFor(who, ctx.params.app!)
    await who.authorize({ action: 'read', org: app.org, app: app.name })
    const release = store.get(app.name, ctx.params.id!)
    if (!release) throw new NotFoundError(`release ${ctx.params.id!.slice(0, 40)}`)
    return release
  })

  router.add('POST', '/v1/apps/:app/releases', async (ctx) => {
    const who = await api.caller(ctx)
    const app = api.appFor(who, ctx.params.app!)
    await who.authorize({ action: 'write', org: app.org, app: app.name })
    const body = await ctx.body() as { image?: unknown; strategy?: unknown; description?: unknown }
    if (typeof body?.image !== 'string' || body.image === '' || body.image.length > 512) throw new InvalidArgumentError('image is required (the image reference deployed)')
    if (typeof body.strategy !== 'string' || body.strategy.length > 40) throw new InvalidArgumentError('strategy is required')
    if (body.description !== undefined && (typeof body.description !== 'string' || body.description.length > 1000)) throw new InvalidArgumentError('description must be a string of at most 1000 characters')
    return { status: 201, body: store.create(app.name, { image: body.image, strategy: body.strategy, description: body.description as string | undefined }) }
  })

  router.add('PATCH', '/v1/apps/:app/releases/:id', async (ctx) => {
    const who = await api.caller(ctx)
    const app = api.appFor(who, ctx.params.app!)
    await who.authorize({ action: 'write', org: app.org, app: app.name })
    const body = await ctx.body() as { status?: unknown; error?: unknown }
    if (!RELEASE_STATUSES.includes(body?.status as ReleaseStatus)) throw new InvalidArgumentError(`status must be one of ${RELEASE_STATUSES.join(', ')}`)
    if (body.error !== undefined && (typeof body.error !== 'string' || body.error.length > 4000)) throw new InvalidArgumentError('error must be a string of at most 4000 characters')
    const existing = store.get(app.name, ctx.params.id!)
    if (!existing) throw new NotFoundError(`release ${ctx.params.id!.slice(0, 40)}`)
    return store.setStatus(app.name, existing.id, body.status as ReleaseStatus, body.error as string | undefined)
  })
}
