import { Bus, SUBJECTS } from '../bus/index.js'
import { InsufficientCapacityError, type Logger } from '../core/index.js'
import type { HostResources, ReservationLedger } from '../placement/index.js'
import type { Agent } from './agent.js'

// The agent on the bus: the API's commands arrive on `hangar.agent.<host>.rpc`, and every Machine
// change and log line goes out as it happens. The methods mirror the Machines API one to one.

export interface HostInfo {
  id: string
  region: string
  /** The host's address (for proxies and backhaul). */
  addr: string
  /** The host's proxy (its public ports bind here), if one runs. */
  proxyAddr?: string
  catalogUrl?: string
  capacity: { cpus: number; memoryMb: number }
  /** The host's WireGuard mesh identity, when it runs one (src/host/host-mesh.ts learns peers from it). */
  mesh?: { publicKey: string; endpoint: string; overlayAddress: string }
  usage: { machines: number; cpus: number; memoryMb: number }
  startedAt: string
}

export interface AgentServiceOptions {
  agent: Agent
  bus: Bus
  info: () => HostInfo
  logger: Logger
  heartbeatMs?: number
  /** The host's reservations (placement market) and resources, to honour a create's reservation. */
  ledger?: ReservationLedger
  resources?: () => HostResources
}

export function serveAgent(options: AgentServiceOptions): () => void {
  const { agent, bus } = options
  const handlers = {
    create: async (p: { app: string; org: string; network: number; primaryRegion?: string; reservationId?: string; request: Parameters<Agent['createMachine']>[0]['request']; secrets?: Record<string, string> }) => {
      const { ledger, resources } = options
      if (!ledger || !resources) return agent.createMachine(p)
      const need = { cpus: p.request.config.guest?.cpus ?? 1, memoryMb: p.request.config.guest?.memory_mb ?? 256 }
      // The reservation the offer made holds the resources until the Machine is recorded (then
      // its usage counts). One that lapsed is taken again if there is still room.
      let reservationId = p.reservationId
      if (!reservationId || !ledger.extend(reservationId, 120_000)) {
        const fresh = ledger.reserve(resources(), need, 120_000)
        if (!fresh) throw new InsufficientCapacityError(`host ${agent.hostId} no longer has room for ${need.cpus} CPU / ${need.memoryMb} MB`)
        reservationId = fresh.id
      }
      try {
        return await agent.createMachine(p)
      } finally {
        ledger.release(reservationId)
      }
    },
    get: (p: { app: string; id: string; includeLease?: boolean }) => agent.getMachine(p.app, p.id, { includeLease: p.includeLease }),
    list: (p: { app: string; filters: Parameters<Agent['listMachines']>[1] }) => agent.listMachines(p.app, p.filters),
    update: (p: { app: string; id: string; request: Parameters<Agent['updateMachine']>[2]; nonce?: string; secrets?: Record<string, string> }) => agent.updateMachine(p.app, p.id, p.request, p.nonce, p.secrets),
    start: (p: { app: string; id: string; nonce?: string; secrets?: Record<string, string> }) => agent.startMachine(p.app, p.id, p.nonce, p.secrets),
    stop: (p: { app: string; id: string; signal?: string; timeout?: string | number; nonce?: string }) => agent.stopMachine(p.app, p.id, { signal: p.signal, timeout: p.timeout }, p.nonce),
    suspend: (p: { app: string; id: string; nonce?: string }) => agent.suspendMachine(p.app, p.id, p.nonce),
    restart: (p: { app: string; id: string; signal?: string; timeout?: string | number; forceStop?: boolean; nonce?: string }) => agent.restartMachine(p.app, p.id, p, p.nonce),
    destroy: (p: { app: string; id: string; force?: boolean; nonce?: string }) => agent.destroyMachine(p.app, p.id, { force: p.force }, p.nonce),
    signal: (p: { app: string; id: string; signal: unknown; nonce?: string }) => agent.signalMachine(p.app, p.id, p.signal, p.nonce),
    exec: (p: { app: string; id: string; request: Parameters<Agent['execMachine']>[2] }) => agent.execMachine(p.app, p.id, p.request),
    wait: (p: { app: string; id: string; states: Parameters<Agent['waitMachine']>[2]['states']; version?: string; timeoutMs?: number }) => agent.waitMachine(p.app, p.id, p),
    events: (p: { app: string; id: string; limit?: number }) => agent.events(p.app, p.id, p.limit),
    versions: (p: { app: string; id: string }) => agent.versions(p.app, p.id),
    ps: (p: { app: string; id: string }) => agent.processes(p.app, p.id),
    getLease: (p: { app: string; id: string }) => agent.getLease(p.app, p.id),
    acquireLease: (p: { app: string; id: string; ttlSeconds?: number; description?: string; owner?: string; nonce?: string }) => agent.acquireLease(p.app, p.id, p, p.nonce),
    releaseLease: (p: { app: string; id: string; nonce?: string }) => agent.releaseLease(p.app, p.id, p.nonce),
    cordon: (p: { app: string; id: string; cordoned: boolean; nonce?: string }) => agent.setCordoned(p.app, p.id, p.cordoned, p.nonce),
    getMetadata: (p: { app: string; id: string }) => agent.getMetadata(p.app, p.id),
    updateMetadata: (p: { app: string; id: string; changes: Record<string, string | null>; replace: boolean; machineVersion?: string; nonce?: string }) => agent.updateMetadata(p.app, p.id, p.changes, p, p.nonce),
    routes: () => agent.routes(),
    info: () => options.info(),
  }
  const stopServing = bus.serve(SUBJECTS.agentRpc(agent.hostId), handlers)
  const stopDiscover = bus.reply(SUBJECTS.hostsDiscover, () => options.info())
  const beat = () => bus.publish(SUBJECTS.hostHeartbeat, options.info())
  beat()
  const timer = setInterval(beat, options.heartbeatMs ?? 2000)
  timer.unref()
  return () => { clearInterval(timer); stopServing(); stopDiscover() }
}
