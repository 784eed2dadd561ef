import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createLogger } from '../core/index.js'
import { startApi } from './server.js'

// `hangar api`: the Machines API as its own process. On first start with `bootstrapOrg`, it makes
// that org and a token for it, written (mode 600) to `tokenFile` for `hangar up` to hand out.

export interface ApiProcessOptions {
  dataDir: string
  natsUrl: string
  host?: string
  port?: number
  region?: string
  bootstrapOrg?: string
  tokenFile?: string
  /** A catalog node's API (apps are written there; Machine lookups read it). */
  catalogUrl?: string
}

export async function runApiProcess(options: ApiProcessOptions): Promise<void> {
  const logger = createLogger('api')
  mkdirSync(options.dataDir, { recursive: true })
  const api = await startApi({ natsUrl: options.natsUrl, dbPath: join(options.dataDir, 'api.db'), host: options.host, port: options.port, region: options.region, logger, catalogUrl: options.catalogUrl })
  if (options.bootstrapOrg) {
    // The first org, its signing key and an fm2_ org token for its owner (issue 5: `hangar up`
    // hands out a macaroon). A restart keeps the token file as it is.
    const created = api.store.getOrg(options.bootstrapOrg) ? undefined : api.tenancy.createOrg(options.bootstrapOrg, { member: 'owner' })
    if (options.tokenFile && !existsSync(options.tokenFile)) {
      const token = created?.token ?? api.tenancy.issueToken({ org: options.bootstrapOrg, kind: 'org', name: 'hangar up', member: 'owner' })
      writeFileSync(options.tokenFile, token.token, { mode: 0o600 })
    }
  }
  writeFileSync(join(options.dataDir, 'api.url'), api.url)
  writeFileSync(join(options.dataDir, 'api.pid'), String(process.pid))
  const shutdown = async () => { await api.close(); process.exit(0) }
  process.once('SIGTERM', () => void shutdown())
  process.once('SIGINT', () => void shutdown())
}
