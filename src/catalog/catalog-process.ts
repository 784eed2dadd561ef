import { createLogger, type Logger } from '../core/index.js'
import { startCatalogNode, type CatalogNodeOptions } from './catalog-node.js'
import { PLATFORM_SCHEMA_SQL } from './platform-schema.js'

// A catalog node as a long-running process (`hangar catalog`, and the catalog part of
// `hangar host`). It prints one JSON line on stdout when it is serving —
//   {"ready":true,"site_id":"…","api_url":"http://…","gossip_addr":"…"}
// — so a supervisor or a test can wait for it, and it closes cleanly on SIGTERM/SIGINT (leaving
// the cluster, so peers mark it down at once).

export interface CatalogProcessOptions extends CatalogNodeOptions {
  /** Include Hangar's platform schema (hosts, apps, machines, volumes). Default true. */
  platformSchema?: boolean
  /** Stop when this aborts (besides SIGTERM/SIGINT). */
  signal?: AbortSignal
  /** Where the ready line goes; default stdout. */
  onReady?: (info: { siteId: string; apiUrl: string; gossipAddr: string }) => void
}

export async function runCatalogProcess(options: CatalogProcessOptions): Promise<void> {
  const logger: Logger = options.logger ?? createLogger('catalog', { base: { ...(options.hostId ? { host: options.hostId } : {}) } })
  const schemaSql = [options.platformSchema === false ? '' : PLATFORM_SCHEMA_SQL, options.schemaSql ?? ''].filter((s) => s.trim().length > 0).join(';\n')
  const node = await startCatalogNode({ ...options, schemaSql, logger })
  const info = { siteId: node.siteId, apiUrl: node.apiUrl, gossipAddr: node.gossipAddr }
  if (options.onReady) options.onReady(info)
  else process.stdout.write(JSON.stringify({ ready: true, site_id: info.siteId, api_url: info.apiUrl, gossip_addr: info.gossipAddr }) + '\n')
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop)
      process.off('SIGINT', stop)
      options.signal?.removeEventListener('abort', stop)
      resolve()
    }
    process.once('SIGTERM', stop)
    process.once('SIGINT', stop)
    if (options.signal?.aborted) stop()
    else options.signal?.addEventListener('abort', stop, { once: true })
  })
  logger.info('catalog node stopping')
  await node.close()
}
