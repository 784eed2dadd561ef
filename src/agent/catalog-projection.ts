import { CatalogClient, deleteMachine, upsertHost, upsertMachine, type StatementJson } from '../catalog/index.js'
import type { Logger, MachineRoute } from '../core/index.js'
import type { MachineRow } from './store.js'
import type { HostInfo } from './agent-service.js'

// The agent's projection into the catalog (DESIGN "Who owns what": the agent owns its Machines;
// the catalog carries a projection that every host, the API and the proxies read). Changes are
// coalesced per Machine and written in one transaction every few milliseconds; if the local
// catalog node is down they wait and go out when it is back. Secrets never reach it:
// upsertMachine strips env values and file contents (configForCatalog).

export class CatalogProjection {
  private readonly pending = new Map<string, StatementJson>()
  private timer: NodeJS.Timeout | undefined
  private flushing = false
  private closed = false

  constructor(private readonly client: CatalogClient, private readonly hostId: string, private readonly logger: Logger, private readonly delayMs = 25) {}

  machineChanged(row: MachineRow, route: MachineRoute): void {
    if (row.state === 'destroyed') {
      this.queue(`m:${row.id}`, deleteMachine(row.id))
      return
    }
    this.queue(`m:${row.id}`, upsertMachine({
      id: row.id, name: row.name, app: row.app, org: row.org, host_id: this.hostId, region: row.region, state: row.state,
      instance_id: row.instanceId, private_ip: row.privateIp, address: route.address,
      image: `${row.imageRef.registry}/${row.imageRef.repository}${row.imageRef.tag ? `:${row.imageRef.tag}` : ''}`,
      config: { ...row.config, metadata: { ...row.metadata } }, services: route.services, checks: route.checks, cordoned: row.cordoned,
      process_group: route.processGroup, created_at: Date.parse(row.createdAt), updated_at: Date.parse(row.updatedAt),
    }))
  }

  hostSeen(info: HostInfo, gossipAddr = ''): void {
    const now = Date.now()
    this.queue(`h:${info.id}`, upsertHost({
      id: info.id, region: info.region, addr: info.addr, proxy_addr: info.proxyAddr ?? '', catalog_url: info.catalogUrl ?? '', gossip_addr: gossipAddr,
      cpus: info.capacity.cpus, memory_mb: info.capacity.memoryMb, cpus_used: info.usage.cpus, memory_mb_used: info.usage.memoryMb,
      machines: info.usage.machines, state: 'up', labels: {}, last_seen: now, updated_at: now,
    }))
  }

  private queue(key: string, statement: StatementJson): void {
    if (this.closed) return
    this.pending.set(key, statement)
    if (!this.timer) {
      this.timer = setTimeout(() => { this.timer = undefined; void this.flush() }, this.delayMs)
      this.timer.unref()
    }
  }

  async flush(): Promise<void> {
    if (this.flushing || this.pending.size === 0) return
    this.flushing = true
    const batch = new Map(this.pending)
    this.pending.clear()
    try {
      await this.client.transaction([...batch.values()])
    } catch (err) {
      // Keep what did not go out (newer changes for the same key win), and try again shortly.
      for (const [key, statement] of batch) if (!this.pending.has(key)) this.pending.set(key, statement)
      this.logger.warn('catalog write failed; will retry', { err, pending: this.pending.size })
      if (!this.closed && !this.timer) { this.timer = setTimeout(() => { this.timer = undefined; void this.flush() }, 500); this.timer.unref() }
    } finally {
      this.flushing = false
      if (this.pending.size && !this.timer && !this.closed) void this.flush()
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    await this.flush().catch(() => undefined)
    this.closed = true
    await this.client.close?.()
  }
}
