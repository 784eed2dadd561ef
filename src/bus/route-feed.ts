import type { AppRoute, Logger, Machine, MachineController, MachineRoute, RouteChange, RouteSource } from '../core/index.js'
import { silentLogger } from '../core/index.js'
import { Bus, SUBJECTS } from './bus.js'

// The proxy's view of Machines over NATS, for hosts that run without the catalog: a snapshot
// from every host's agent (`routes`), then every change the agents publish. Changes arrive within
// milliseconds, so the routing table follows Machines "within a second, without restarts". In a
// cluster the catalog's subscription (src/catalog) is the RouteSource instead.

interface MachineChange { hostId: string; machine: Machine; route: MachineRoute }

export class NatsRouteSource implements RouteSource {
  private readonly machines = new Map<string, MachineRoute>()

  constructor(private readonly bus: Bus, private readonly logger: Logger = silentLogger, private readonly resnapshotMs = 30_000) {}

  /** Which host runs a Machine (for the controller). */
  hostOf(machineId: string): string | undefined {
    return this.machines.get(machineId)?.hostId
  }

  subscribe(apply: (change: RouteChange) => void): () => void {
    let stopped = false
    const pending: MachineChange[] = []
    let snapshotTaken = false
    const onChange = (change: MachineChange) => {
      if (!change?.route) return
      if (!snapshotTaken) { pending.push(change); return }
      this.applyChange(change, apply)
    }
    const unsubscribe = this.bus.subscribe<MachineChange>(SUBJECTS.allMachineChanges, onChange)
    const snapshot = async () => {
      const hosts = await this.bus.gather<{ id: string }>(SUBJECTS.hostsDiscover, {}, 300).catch(() => [])
      const routes: MachineRoute[] = []
      for (const host of hosts) {
        try { routes.push(...await this.bus.call<MachineRoute[]>(SUBJECTS.agentRpc(host.id), 'routes', {}, 5_000)) } catch (err) { this.logger.warn('a host gave no routes', { host: host.id, err }) }
      }
      if (stopped) return
      this.machines.clear()
      for (const route of routes) this.machines.set(route.machineId, route)
      apply({ kind: 'snapshot', machines: routes, apps: [] as AppRoute[] })
      snapshotTaken = true
      for (const change of pending.splice(0)) this.applyChange(change, apply)
    }
    void snapshot()
    // A periodic fresh snapshot repairs anything a lost message left out of date.
    const timer = setInterval(() => void snapshot(), this.resnapshotMs)
    timer.unref()
    return () => { stopped = true; clearInterval(timer); unsubscribe() }
  }

  private applyChange(change: MachineChange, apply: (change: RouteChange) => void): void {
    if (change.route.state === 'destroyed') {
      this.machines.delete(change.route.machineId)
      apply({ kind: 'remove', machineId: change.route.machineId })
    } else {
      this.machines.set(change.route.machineId, change.route)
      apply({ kind: 'upsert', machine: change.route })
    }
  }
}

/** Autostart and autostop reach the Machine's agent directly (DESIGN "Placement": Machines are pinned). */
export class NatsMachineController implements MachineController {
  /** `hostOf` says which host runs a Machine (from whatever feeds the proxy's routes). */
  constructor(private readonly bus: Bus, private readonly hostOf: (machineId: string) => string | undefined) {}

  private host(machineId: string): string {
    const hostId = this.hostOf(machineId)
    if (!hostId) throw new Error(`no host known for machine ${machineId}`)
    return hostId
  }

  async start(app: string, machineId: string): Promise<void> {
    await this.bus.call(SUBJECTS.agentRpc(this.host(machineId)), 'start', { app, id: machineId }, 60_000)
  }

  async stop(app: string, machineId: string, options: { signal?: string; timeoutMs?: number }): Promise<void> {
    await this.bus.call(SUBJECTS.agentRpc(this.host(machineId)), 'stop', { app, id: machineId, signal: options.signal, timeout: options.timeoutMs !== undefined ? `${options.timeoutMs}ms` : undefined }, 60_000)
  }

  async suspend(app: string, machineId: string): Promise<void> {
    await this.bus.call(SUBJECTS.agentRpc(this.host(machineId)), 'suspend', { app, id: machineId }, 60_000)
  }
}
