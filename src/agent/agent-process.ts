import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { join } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { Bus, SUBJECTS } from '../bus/index.js'
import { createLogger, enableCommandShell, type Logger, type Machine } from '../core/index.js'
import { ImageStore, mountMachinesPool, prepareRootfs, releaseRootfs, resetRootfs, type PulledImage } from '../images/index.js'
import { bridgeNameFor, defaultMachineSubnet, loadOrCreatePrivateKey, overlayAddressFor, wireguardPublicKey } from '../network/index.js'
import { CrunDriver } from '../runtime/index.js'
import { Agent } from './agent.js'
import { serveAgent, type HostInfo } from './agent-service.js'
import { ReservationLedger, serveOffers } from '../placement/index.js'
import type { ImagePort } from './ports.js'
import { CatalogClient } from '../catalog/index.js'
import { CatalogProjection } from './catalog-projection.js'

// `hangar agent`: one host's agent as its own process (the host supervisor starts it). It owns
// `<data>/agent.db`, `<data>/machines`, `<data>/runtime` and `<data>/images`.

export interface AgentProcessOptions {
  dataDir: string
  region: string
  natsUrl: string
  hostId?: string
  machineSubnet?: string
  bridge?: string
  /** The address other hosts and proxies reach this host at. */
  hostAddress?: string
  proxyAddr?: string
  insecureRegistries?: string[]
  /** How many Machine CPUs one host core may carry (default 16) and memory overcommit (default 4). */
  cpuOvercommit?: number
  memoryOvercommit?: number
  /** The host's catalog node API: the agent writes its host row and Machines there. */
  catalogUrl?: string
  /** The host's catalog gossip address (recorded in its host row). */
  gossipAddr?: string
  /** Machines resolve names through the host's `.internal` DNS (the host runs `hangar dns`). */
  internalDns?: boolean
  /** Where other hosts reach this host's WireGuard (underlay ip:port), when the host runs the mesh. */
  meshEndpoint?: string
  /** The size cap of the host's pool for Machines' writable layers (images/machines-pool.ts);
   * 0 keeps them on the data dir's own filesystem instead. */
  machinesPoolGb?: number
  /** Fixed capacity, overriding the computed one (operators, and tests of placement). */
  capacityCpus?: number
  capacityMemoryMb?: number
  logger?: Logger
}

/** A host's id is made once and kept in its data dir. */
export function hostIdFor(dataDir: string): string {
  const file = join(dataDir, 'host-id')
  if (existsSync(file)) return readFileSync(file, 'utf8').trim()
  mkdirSync(dataDir, { recursive: true })
  const id = randomBytes(6).toString('hex')
  writeFileSync(file, id)
  return id
}

export function imagePort(store: ImageStore): ImagePort {
  return {
    pull: (ref) => store.pull(ref),
    prepareRootfs: (image, machineDir) => prepareRootfs(image as PulledImage, machineDir),
    resetRootfs: (machineDir) => resetRootfs(machineDir),
    releaseRootfs: (machineDir) => releaseRootfs(machineDir),
  }
}

export interface RunningAgent {
  agent: Agent
  bus: Bus
  info(): HostInfo
  close(): Promise<void>
}

export async function startAgent(options: AgentProcessOptions): Promise<RunningAgent> {
  const logger = options.logger ?? createLogger('agent')
  // The host's tools run through one launcher process: forking the agent for each costs it ~1.6 ms of CPU.
  enableCommandShell()
  const hostId = options.hostId ?? hostIdFor(options.dataDir)
  const bus = await Bus.connect(options.natsUrl, { name: `agent-${hostId}`, logger })
  const driver = await CrunDriver.create({
    stateDir: join(options.dataDir, 'runtime'),
    cgroupParent: `hangar-${createHash('sha256').update(hostId).digest('hex').slice(0, 8)}`,
    logger,
  })
  const images = new ImageStore({ dataDir: join(options.dataDir, 'images'), logger, insecureRegistries: options.insecureRegistries })
  if (options.machinesPoolGb !== 0) await mountMachinesPool(options.dataDir, { sizeGb: options.machinesPoolGb, logger })
  const startedAt = new Date().toISOString()
  const projection = options.catalogUrl ? new CatalogProjection(new CatalogClient(options.catalogUrl), hostId, logger) : undefined
  const publishChange = (machine: Machine) => {
    const row = agent.store.getMachine(machine.id)!
    const route = agent.route(row)
    bus.publish(SUBJECTS.machineChanges(hostId), { hostId, machine, route })
    projection?.machineChanged(row, route)
  }
  const agent: Agent = await Agent.open({
    hostId,
    region: options.region,
    dataDir: options.dataDir,
    driver,
    images: imagePort(images),
    bridge: options.bridge ?? bridgeNameFor(hostId),
    machineSubnet: options.machineSubnet ?? defaultMachineSubnet(hostId),
    logger,
    crashPointsFile: process.env.HANGAR_AGENT_CRASH_POINTS,
    internalDns: options.internalDns,
    events: {
      machineChanged: (machine) => publishChange(machine),
      machineRemoved: (machine) => publishChange(machine),
      log: (line) => bus.publish(SUBJECTS.logs(line.app, line.machine_id), line),
    },
  })
  // The mesh's key is made by `hangar host` before the agent starts; the agent only announces it.
  const mesh = options.meshEndpoint
    ? { publicKey: wireguardPublicKey(loadOrCreatePrivateKey(join(options.dataDir, 'wireguard', 'private.key'))), endpoint: options.meshEndpoint, overlayAddress: overlayAddressFor(hostId) }
    : undefined
  // Machines rarely use all they are given: shared CPUs are overcommitted 16× (Fly's shared vCPU
  // is a 1/16 share of a core) and memory 4× by default; operators tune both. Fixed for the
  // process's life (os.cpus() reads /proc/cpuinfo: not something to do per placement offer).
  const capacity = {
    cpus: options.capacityCpus ?? cpus().length * (options.cpuOvercommit ?? 16),
    memoryMb: options.capacityMemoryMb ?? Math.floor((totalmem() / 1024 / 1024) * (options.memoryOvercommit ?? 4)),
  }
  const info = (usage = agent.usage()): HostInfo => {
    return {
      ...(mesh ? { mesh } : {}),
      id: hostId, region: options.region, addr: options.hostAddress ?? '127.0.0.1', proxyAddr: options.proxyAddr, catalogUrl: options.catalogUrl,
      capacity,
      usage: { machines: usage.machines, cpus: usage.cpus, memoryMb: usage.memoryMb },
      startedAt,
    }
  }
  // The host's side of the placement market: offers and short reservations (DESIGN "Placement").
  const ledger = new ReservationLedger()
  const resources = () => {
    const usage = agent.usage()
    const used = { cpus: usage.cpus, memoryMb: usage.memoryMb }
    // A host out of private addresses is full whatever its CPUs and memory say.
    const addressesLeft = usage.addressesFree - ledger.size()
    return { capacity: addressesLeft > 0 ? capacity : used, used }
  }
  const stopOffers = serveOffers({ bus, hostId, region: options.region, ledger, resources, logger })
  const stopServing = serveAgent({ agent, bus, info, logger, ledger, resources })
  // The catalog learns this host and every Machine it holds now (they may have changed while it
  // was down), then each change as it happens, and the host's heartbeat.
  if (projection) {
    for (const row of agent.store.liveMachines()) projection.machineChanged(row, agent.route(row))
    projection.hostSeen(info(), options.gossipAddr)
  }
  const catalogBeat = projection ? setInterval(() => projection.hostSeen(info(), options.gossipAddr), 5_000) : undefined
  catalogBeat?.unref()
  logger.info('agent ready', { hostId, region: options.region, machines: agent.usage().machines })
  let closed = false
  return {
    agent, bus, info,
    async close() {
      if (closed) return
      closed = true
      stopServing()
      stopOffers()
      if (catalogBeat) clearInterval(catalogBeat)
      await agent.close()
      await projection?.close()
      await driver.close()
      await images.close()
      await bus.close()
    },
  }
}

/** The process entry: runs until SIGTERM/SIGINT, then drains. */
export async function runAgentProcess(options: AgentProcessOptions): Promise<void> {
  const running = await startAgent(options)
  const shutdown = async () => {
    await running.close()
    process.exit(0)
  }
  process.once('SIGTERM', shutdown)
  process.once('SIGINT', shutdown)
}
