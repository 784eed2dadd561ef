import { Bus, SUBJECTS } from '../bus/index.js'
import type { HostInfo } from '../agent/index.js'
import type { Logger, Machine, MachineRoute } from '../core/index.js'
import type { ApiStore } from './api-store.js'

// What the API knows about hosts: each host's heartbeat (who it is, where, how full), and every
// Machine change the agents publish, kept as the Machine → host index the API routes requests by.

const HOST_TTL_MS = 10_000

export class HostDirectory {
  private readonly hosts = new Map<string, { info: HostInfo; seenAt: number }>()
  private readonly stops: Array<() => void> = []

  constructor(private readonly bus: Bus, private readonly store: ApiStore, private readonly logger: Logger) {}

  async start(): Promise<void> {
    this.stops.push(this.bus.subscribe<HostInfo>(SUBJECTS.hostHeartbeat, (info) => this.saw(info)))
    this.stops.push(this.bus.subscribe<{ hostId: string; machine: Machine; route: MachineRoute }>(SUBJECTS.allMachineChanges, ({ hostId, machine, route }) => {
      // Late changes of a deleted app's Machines must not bring its index back.
      if (machine?.id && route?.app && this.store.getApp(route.app)) this.store.indexMachine(machine.id, route.app, hostId, machine.state)
    }))
    await this.refresh(300)
  }

  /** Asks every host to answer now (used at start and when a region looks empty). */
  async refresh(maxWaitMs = 300): Promise<void> {
    for (const info of await this.bus.gather<HostInfo>(SUBJECTS.hostsDiscover, {}, maxWaitMs)) this.saw(info)
  }

  private saw(info: HostInfo): void {
    if (!info?.id) return
    if (!this.hosts.has(info.id)) this.logger.info('host joined', { host: info.id, region: info.region })
    this.hosts.set(info.id, { info, seenAt: Date.now() })
  }

  alive(): HostInfo[] {
    const now = Date.now()
    return [...this.hosts.values()].filter((h) => now - h.seenAt < HOST_TTL_MS).map((h) => h.info)
  }

  get(hostId: string): HostInfo | undefined {
    return this.hosts.get(hostId)?.info
  }

  isAlive(hostId: string): boolean {
    const entry = this.hosts.get(hostId)
    return entry !== undefined && Date.now() - entry.seenAt < HOST_TTL_MS
  }

  regions(): string[] {
    return [...new Set(this.alive().map((h) => h.region))].sort()
  }

  close(): void {
    for (const stop of this.stops) stop()
  }
}
