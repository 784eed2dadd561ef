import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync, openSync, writeSync, closeSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import {
  ConflictError, IllegalStateError, InvalidArgumentError, NameTakenError, NotFoundError, UnprocessableError, WaitTimeoutError,
  isHangarError, newMachineId, newMachineName, newNonce, newUlid, normaliseSignal, parseDurationMs, silentLogger,
  type CreateMachineRequest, type ExecResponse, type ExitEvent, type LogLine, type Logger, type Machine, type MachineConfig,
  type MachineEvent, type MachineState, type MachineVersion, type ProcessStat, type StopConfig, type UpdateMachineRequest,
  type WaitResponse, type WaitableState, type MachineRoute,
} from '../core/index.js'
import type { GuestExit, RuntimeDriver } from '../runtime/index.js'
import { open as openSealed, randomKey, seal, SealedBoxError } from '../auth/index.js'
import {
  ensureBridge, gatewayIpv4, hostNumber, hostResolverAddress, ipv4Capacity, machineIpv4, parseCidr, setupMachineNetwork, sixpnAddress,
  teardownMachineNetwork, listMachineNetns, type Ipv4Subnet,
} from '../network/index.js'
import { AgentStore, type MachineRow, type OperationKind, type OperationRow } from './store.js'
import { assertActionAllowed, isSettled } from './transition-table.js'
import { DEFAULT_CPUS, DEFAULT_MEMORY_MB, etcHosts, hostNameservers, processPlan, resolveUser, resolvConf } from './guest-setup.js'
import { LogTailer } from './log-tailer.js'
import { MachineChecks, checkDefinitions } from './checks.js'
import type { AgentEvents, AgentImage, ImagePort } from './ports.js'

// The agent (Fly's flyd): the source of truth for the Machines of one host. Every operation is a
// durable step machine: its steps are logged in SQLite before they run, each step is idempotent,
// and one Machine runs one operation at a time (a per-Machine queue). After a kill -9 the agent
// reopens its log, finishes every unfinished operation from the step it was in, adopts the
// guests that kept running under their monitors, and cleans up whatever no Machine owns.

export interface AgentOptions {
  hostId: string
  region: string
  dataDir: string
  driver: RuntimeDriver
  images: ImagePort
  /** The host bridge and the private IPv4 subnet Machines get addresses from. */
  bridge: string
  machineSubnet: string
  logger?: Logger
  events?: AgentEvents
  /** Per-Machine log bound (conmon rotates at this size). */
  logMaxBytes?: number
  /** Crash injection for the crash tests: a file of `kind:step:begin|done` lines. */
  crashPointsFile?: string
  /** The host runs `.internal` DNS on its resolver address (`hangar host` passes
   * `hangar agent --internal-dns` when it runs `hangar dns`). */
  internalDns?: boolean
}

interface StepContext {
  op: OperationRow
  /** Values earlier steps recorded (survive a crash: they are in the step log). */
  data: Record<string, unknown>
}

interface Step {
  name: string
  run(ctx: StepContext): Promise<unknown>
  /** The step only writes the agent's database: it runs inside the same transaction as its
   * begin and done records, so it is all or nothing even across a crash. */
  runInTransaction?: (ctx: StepContext) => unknown
}

interface CreateParams {
  machine: MachineRow
  launch: boolean
  leaseTtl?: number
}

interface ExitDecision {
  exit: ExitEvent
  action: 'stop' | 'restart' | 'destroy'
  restartCount: number
}

const MAX_WAIT_MS = 60_000
const DEFAULT_STOP_TIMEOUT_MS = 5_000
const DEFAULT_STOP_SIGNAL = 'SIGINT'
const KILL_GRACE_MS = 10_000
const DEFAULT_MAX_RETRIES = 10
// How long a Machine's changes are gathered before its view goes out (NATS, catalog): long
// enough that a create's creating → starting → started usually goes out once.
const PUBLISH_COALESCE_MS = 25

export class Agent {
  readonly store: AgentStore
  private readonly logger: Logger
  private readonly subnet: Ipv4Subnet
  private readonly hostNumber: number
  private readonly machinesDir: string
  private readonly queues = new Map<string, Promise<unknown>>()
  private readonly exitWaiters = new Map<string, Set<(exit: GuestExit) => void>>()
  private readonly stateWaiters = new Map<string, Set<() => void>>()
  private readonly publishTimers = new Map<string, NodeJS.Timeout>()
  private readonly checks = new Map<string, MachineChecks>()
  private readonly images = new Map<string, AgentImage>()
  private readonly tailer: LogTailer
  private readonly nameservers: string[]
  private stopExitWatch: (() => void) | undefined
  private closed = false
  /** Seals each Machine's secrets in agent.db (issue 5); the key file never leaves the host. */
  private readonly secretsKey: Buffer

  private constructor(private readonly options: AgentOptions) {
    this.logger = options.logger ?? silentLogger
    this.store = new AgentStore(join(options.dataDir, 'agent.db'), { exclusive: true })
    this.subnet = parseCidr(options.machineSubnet)
    // reference §3.3: Machines resolve through the platform's DNS (`.internal` names, the rest
    // forwarded) when the host runs it, at the host's own resolver address on the bridge
    // (src/network/dns-resolver-address.ts); otherwise through the host's resolvers.
    this.nameservers = options.internalDns ? [hostResolverAddress(options.hostId)] : hostNameservers()
    this.hostNumber = hostNumber(options.hostId)
    this.machinesDir = join(options.dataDir, 'machines')
    mkdirSync(this.machinesDir, { recursive: true })
    this.secretsKey = loadSecretsKey(join(options.dataDir, SECRETS_KEY_FILE))
    this.tailer = new LogTailer((line: LogLine) => options.events?.log?.(line))
  }

  static async open(options: AgentOptions): Promise<Agent> {
    const agent = new Agent(options)
    await ensureBridge({ name: options.bridge, gatewayCidr: `${gatewayIpv4(agent.subnet)}/${agent.subnet.prefix}`, resolverAddress: hostResolverAddress(options.hostId) })
    agent.stopExitWatch = options.driver.onExit((machineId) => agent.onGuestExit(machineId))
    await agent.recover()
    return agent
  }

  get hostId(): string { return this.options.hostId }
  get region(): string { return this.options.region }

  // ───────────────────────────── queries ─────────────────────────────

  machineView(row: MachineRow, options: { includeLease?: boolean; nonce?: string } = {}): Machine {
    const lease = this.activeLease(row.id)
    const config: MachineConfig = { ...row.config, metadata: { ...row.metadata } }
    const events = this.store.events(row.id, 10)
    const machine: Machine = {
      id: row.id,
      name: row.name,
      state: row.state,
      region: row.region,
      instance_id: row.instanceId,
      version: row.instanceId,
      private_ip: row.privateIp,
      config,
      image_ref: row.imageRef,
      created_at: row.createdAt,
      updated_at: row.updatedAt,
      events,
      checks: this.checks.get(row.id)?.list() ?? [],
      host_status: 'ok',
      cordoned: row.cordoned,
      host_id: this.options.hostId,
    }
    if (options.nonce) machine.nonce = options.nonce
    if (options.includeLease && lease) machine.lease = { owner: lease.owner, description: lease.description, expires_at: lease.expiresAt, nonce: lease.nonce, version: lease.version }
    return machine
  }

  getMachine(app: string, machineId: string, options: { includeDeleted?: boolean; includeLease?: boolean } = {}): Machine {
    return this.machineView(this.requireMachine(app, machineId, options.includeDeleted ?? true), options)
  }

  listMachines(app: string, filters: { states?: MachineState[]; region?: string; metadata?: Record<string, string>; includeDeleted?: boolean } = {}): Machine[] {
    return this.store.machinesOfApp(app)
      .filter((m) => (filters.includeDeleted ? true : m.state !== 'destroyed'))
      .filter((m) => !filters.states?.length || filters.states.includes(m.state))
      .filter((m) => !filters.region || m.region === filters.region)
      .filter((m) => Object.entries(filters.metadata ?? {}).every(([k, v]) => (m.metadata[k] ?? m.config.metadata?.[k]) === v))
      .map((m) => this.machineView(m))
  }

  /** Every live Machine on this host, for the proxy's routing table and the catalog. */
  routes(): MachineRoute[] {
    return this.store.liveMachines().map((m) => this.route(m))
  }

  route(m: MachineRow): MachineRoute {
    return {
      machineId: m.id, app: m.app, org: m.org, region: m.region, hostId: this.options.hostId, state: m.state,
      instanceId: m.instanceId, address: m.ipv4, services: m.config.services ?? [],
      checks: this.checks.get(m.id)?.serviceChecks() ?? [],
      cordoned: m.cordoned, processGroup: m.metadata.fly_process_group ?? m.config.metadata?.fly_process_group ?? 'app',
      stopConfig: m.config.stop_config ?? {}, primaryRegion: m.primaryRegion || m.region, updatedAt: Date.parse(m.updatedAt),
    }
  }

  events(app: string, machineId: string, limit = 20): MachineEvent[] {
    this.requireMachine(app, machineId, true)
    return this.store.events(machineId, Math.min(Math.max(limit, 1), 50))
  }

  versions(app: string, machineId: string): MachineVersion[] {
    this.requireMachine(app, machineId, true)
    return this.store.versions(machineId).map((v) => ({ version: v.instanceId, user_config: v.config }))
  }

  async processes(app: string, machineId: string): Promise<ProcessStat[]> {
    const machine = this.requireMachine(app, machineId)
    if (machine.state !== 'started') return []
    return this.options.driver.processes(machineId)
  }

  /** How many Machines the host runs and how much they reserve (for placement offers). */
  usage(): { machines: number; cpus: number; memoryMb: number; addressesFree: number } {
    // Asked for by every placement offer and heartbeat: summed in SQLite, not by parsing every row.
    const { machines, cpus, memoryMb } = this.store.liveUsage(DEFAULT_CPUS, DEFAULT_MEMORY_MB)
    return { machines, cpus, memoryMb, addressesFree: ipv4Capacity(this.subnet) - machines }
  }

  // ───────────────────────────── operations ─────────────────────────────

  async createMachine(input: { app: string; org: string; network: number; primaryRegion?: string; request: CreateMachineRequest; secrets?: Record<string, string> }): Promise<Machine> {
    const { request } = input
    const name = request.name ?? newMachineName()
    if (this.store.isNameTaken(input.app, name)) throw new NameTakenError(`a machine named "${name}" already exists in app ${input.app}`)
    // Pulled before anything is recorded: a bad or missing image fails the create and leaves
    // no Machine behind.
    const image = await this.pullImage(request.config.image)
    const config = normaliseConfig(request.config)
    const now = new Date().toISOString()
    const id = newMachineId()
    const params = (m: MachineRow): CreateParams => ({ machine: m, launch: request.skip_launch !== true, leaseTtl: request.lease_ttl })
    let machine!: MachineRow
    let op!: OperationRow
    this.store.transaction(() => {
      if (this.store.isNameTaken(input.app, name)) throw new NameTakenError(`a machine named "${name}" already exists in app ${input.app}`)
      const ordinal = this.store.freeOrdinal()
      if (ordinal > ipv4Capacity(this.subnet)) throw new UnprocessableError(`host ${this.options.hostId} has no private address left for another Machine`)
      const sixpnOrdinal = this.store.nextCounter('sixpn')
      machine = {
        id, app: input.app, org: input.org, network: input.network, name, region: this.options.region, state: 'creating',
        instanceId: newUlid(), ordinal, privateIp: sixpnAddress(input.network, this.hostNumber, sixpnOrdinal),
        ipv4: machineIpv4(this.subnet, ordinal), config, imageRef: image.imageRef, imageDigest: image.digest, imageConfig: image.config,
        metadata: { ...(config.metadata ?? {}) }, cordoned: request.skip_service_registration === true, restartCount: 0,
        primaryRegion: input.primaryRegion ?? config.env?.PRIMARY_REGION ?? this.options.region, createdAt: now, updatedAt: now,
      }
      // The row (holding its ordinal, so concurrent creates never share an address) and the
      // create operation are written together: a crash never leaves one without the other.
      this.store.insertMachine(machine)
      // Secrets go beside the row, sealed, never into the operation's params.
      if (input.secrets) this.storeSecrets(id, input.secrets)
      op = this.store.beginOperation(id, 'create', params(machine) as unknown as Record<string, unknown>)
    })
    const nonce = await this.enqueue(id, () => this.runOperation(machine, 'create', op.params, { existing: op }))
    const latest = this.store.getMachine(id)!
    return this.machineView(latest, { nonce: typeof nonce === 'string' ? nonce : undefined })
  }

  async startMachine(app: string, machineId: string, nonce?: string, secrets?: Record<string, string>): Promise<{ previous_state: MachineState; migrated: boolean; new_host: string }> {
    this.checkMutation(app, machineId, 'start', nonce)
    return this.enqueue(machineId, async () => {
      const machine = this.checkMutation(app, machineId, 'start', nonce)
      if (secrets) this.storeSecrets(machineId, secrets)
      this.store.setRestartCount(machineId, 0)
      await this.runOperation(machine, 'start', { resume: machine.state === 'suspended' })
      return { previous_state: machine.state, migrated: false, new_host: '' }
    })
  }

  async stopMachine(app: string, machineId: string, options: { signal?: string; timeout?: string | number }, nonce?: string): Promise<{ ok: true }> {
    const stop = this.stopParams(this.checkMutation(app, machineId, 'stop', nonce).config.stop_config, options)
    return this.enqueue(machineId, async () => {
      const machine = this.checkMutation(app, machineId, 'stop', nonce)
      await this.runOperation(machine, 'stop', stop)
      return { ok: true as const }
    })
  }

  async suspendMachine(app: string, machineId: string, nonce?: string): Promise<{ ok: true }> {
    this.checkMutation(app, machineId, 'suspend', nonce)
    return this.enqueue(machineId, async () => {
      const machine = this.checkMutation(app, machineId, 'suspend', nonce)
      await this.runOperation(machine, 'suspend', {})
      return { ok: true as const }
    })
  }

  async restartMachine(app: string, machineId: string, options: { signal?: string; timeout?: string | number; forceStop?: boolean }, nonce?: string): Promise<{ ok: true }> {
    const initial = this.checkMutation(app, machineId, 'restart', nonce)
    const stop = this.stopParams(initial.config.stop_config, { signal: options.forceStop ? 'SIGKILL' : options.signal, timeout: options.timeout })
    return this.enqueue(machineId, async () => {
      const machine = this.checkMutation(app, machineId, 'restart', nonce)
      this.store.setRestartCount(machineId, 0)
      await this.runOperation(machine, 'restart', stop)
      return { ok: true as const }
    })
  }

  async updateMachine(app: string, machineId: string, request: UpdateMachineRequest, nonce?: string, secrets?: Record<string, string>): Promise<Machine> {
    const current = this.checkMutation(app, machineId, 'update', nonce)
    if (request.current_version && request.current_version !== current.instanceId) {
      throw new ConflictError(`machine ${machineId} is at version ${current.instanceId}, not ${request.current_version} (current_version)`)
    }
    if (request.region && request.region !== current.region) throw new InvalidArgumentError(`region cannot be changed by an update (machine ${machineId} is in ${current.region})`)
    if (request.name && request.name !== current.name) throw new InvalidArgumentError(`name cannot be changed by an update (machine ${machineId} is named ${current.name})`)
    const image = await this.pullImage(request.config.image)
    const config = normaliseConfig(request.config)
    const version = { instanceId: newUlid(), config, imageRef: image.imageRef, imageDigest: image.digest, imageConfig: image.config, metadata: { ...(config.metadata ?? {}) } }
    await this.enqueue(machineId, async () => {
      const machine = this.checkMutation(app, machineId, 'update', nonce)
      if (request.current_version && request.current_version !== machine.instanceId) throw new ConflictError(`machine ${machineId} is at version ${machine.instanceId}, not ${request.current_version} (current_version)`)
      if (secrets) this.storeSecrets(machineId, secrets)
      const stop = this.stopParams(machine.config.stop_config, {})
      await this.runOperation(machine, 'update', { version, previousState: machine.state, skipLaunch: request.skip_launch === true, ...stop })
    })
    return this.machineView(this.store.getMachine(machineId)!)
  }

  async destroyMachine(app: string, machineId: string, options: { force?: boolean }, nonce?: string): Promise<{ ok: true }> {
    const action = options.force ? 'force_destroy' : 'destroy'
    this.checkMutation(app, machineId, action, nonce)
    return this.enqueue(machineId, async () => {
      const machine = this.checkMutation(app, machineId, action, nonce)
      await this.runOperation(machine, 'destroy', { force: options.force === true })
      return { ok: true as const }
    })
  }

  async signalMachine(app: string, machineId: string, signal: unknown, nonce?: string): Promise<{ ok: true }> {
    const name = normaliseSignal(signal)
    this.checkMutation(app, machineId, 'signal', nonce)
    return this.enqueue(machineId, async () => {
      const machine = this.checkMutation(app, machineId, 'signal', nonce)
      await this.runOperation(machine, 'signal', { signal: name })
      return { ok: true as const }
    })
  }

  /** Exec does not queue behind other operations (it changes no state) but is logged like one. */
  async execMachine(app: string, machineId: string, request: { command?: string[]; cmd?: string; stdin?: string; timeout?: number }): Promise<ExecResponse> {
    const machine = this.requireMachine(app, machineId)
    assertActionAllowed('exec', machine.state)
    const command = request.command?.length ? request.command : request.cmd ? ['sh', '-c', request.cmd] : undefined
    if (!command) throw new InvalidArgumentError('exec: give the command as "command": ["prog", "arg", …]')
    const timeoutMs = Math.min(Math.max((request.timeout ?? 30) * 1000, 1000), 300_000)
    const op = this.store.beginOperation(machineId, 'exec', { command: command[0] })
    this.store.recordStep(op.id, 'run_exec', 'begin')
    this.maybeCrash('exec', 'run_exec', 'begin')
    try {
      const result = await this.options.driver.exec(machineId, command, { stdin: request.stdin, timeoutMs })
      this.store.recordStep(op.id, 'run_exec', 'done')
      this.store.finishOperation(op.id, 'done')
      return result
    } catch (err) {
      this.store.finishOperation(op.id, 'failed', (err as Error).message)
      throw err
    }
  }

  async waitMachine(app: string, machineId: string, options: { states: WaitableState[]; version?: string; timeoutMs?: number }): Promise<WaitResponse> {
    this.requireMachine(app, machineId, true)
    const timeoutMs = Math.min(options.timeoutMs ?? MAX_WAIT_MS, MAX_WAIT_MS)
    const states = options.states.length ? options.states : ['started' as const]
    const matches = (m: MachineRow) => {
      if (options.version && m.instanceId !== options.version && m.state !== 'destroyed') return false
      return states.some((s) => (s === 'settled' ? isSettled(m.state) : m.state === s))
    }
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const machine = this.store.getMachine(machineId)!
      if (matches(machine)) {
        const lastEvent = this.store.events(machineId, 1)[0]
        return { ok: true, state: machine.state, version: machine.instanceId, event_id: lastEvent?.id ?? '' }
      }
      const remaining = deadline - Date.now()
      if (remaining <= 0) throw new WaitTimeoutError(`machine failed to reach desired state, ${states.join(', ')}, currently ${machine.state}`)
      await this.waitForStateChange(machineId, remaining)
    }
  }

  // ───────────────────────────── leases, cordons, metadata ─────────────────────────────

  private activeLease(machineId: string) {
    const lease = this.store.getLease(machineId)
    if (lease && lease.expiresAt * 1000 <= Date.now()) {
      this.store.deleteLease(machineId)
      return undefined
    }
    return lease
  }

  getLease(app: string, machineId: string) {
    this.requireMachine(app, machineId)
    const lease = this.activeLease(machineId)
    if (!lease) throw new NotFoundError(`lease for machine ${machineId}`)
    return leaseResponse(lease)
  }

  /** reference §1.2: a POST with the current nonce refreshes the lease; without it, a held lease is a 409. */
  acquireLease(app: string, machineId: string, options: { ttlSeconds?: number; description?: string; owner?: string }, nonce?: string) {
    const machine = this.requireMachine(app, machineId)
    assertActionAllowed('lease', machine.state)
    const ttl = options.ttlSeconds ?? 30
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > 86_400) throw new InvalidArgumentError(`ttl must be a whole number of seconds between 1 and 86400, got ${options.ttlSeconds}`)
    const existing = this.activeLease(machineId)
    if (existing && existing.nonce !== nonce) throw new ConflictError(`machine ${machineId} already has a lease (owner ${existing.owner}) until ${new Date(existing.expiresAt * 1000).toISOString()}`)
    const lease = {
      machineId, nonce: existing?.nonce ?? newNonce(), owner: options.owner ?? existing?.owner ?? 'hangar',
      description: options.description ?? existing?.description ?? '', expiresAt: Math.floor(Date.now() / 1000) + ttl, version: machine.instanceId,
    }
    this.store.putLease(lease)
    return leaseResponse(lease)
  }

  releaseLease(app: string, machineId: string, nonce?: string): { ok: true } {
    this.requireMachine(app, machineId)
    const existing = this.activeLease(machineId)
    if (!existing) throw new NotFoundError(`lease for machine ${machineId}`)
    if (existing.nonce !== nonce) throw new ConflictError(`the lease of machine ${machineId} is held with another nonce (send it in fly-machine-lease-nonce)`)
    this.store.deleteLease(machineId)
    return { ok: true }
  }

  setCordoned(app: string, machineId: string, cordoned: boolean, nonce?: string): { ok: true } {
    this.checkMutation(app, machineId, 'cordon', nonce)
    this.store.setCordoned(machineId, cordoned)
    this.store.addEvent(machineId, { type: cordoned ? 'cordon' : 'uncordon', status: this.store.getMachine(machineId)!.state, source: 'user' })
    this.changed(machineId)
    return { ok: true }
  }

  getMetadata(app: string, machineId: string): Record<string, string> {
    return { ...this.requireMachine(app, machineId).metadata }
  }

  /** reference §1.2: metadata changes do not make a new version; null or "" removes a key. */
  updateMetadata(app: string, machineId: string, changes: Record<string, string | null>, options: { replace: boolean; machineVersion?: string }, nonce?: string): { metadata: Record<string, string> } {
    const machine = this.checkMutation(app, machineId, 'metadata', nonce)
    if (options.machineVersion && options.machineVersion !== machine.instanceId) {
      throw new IllegalStateError(`machine_version ${options.machineVersion} does not match the machine's version ${machine.instanceId}`, machine.state)
    }
    const metadata = options.replace ? {} as Record<string, string> : { ...machine.metadata }
    for (const [key, value] of Object.entries(changes)) {
      validateMetadataKey(key)
      if (value === null || value === '') delete metadata[key]
      else metadata[key] = value
    }
    this.store.setMetadata(machineId, metadata)
    this.changed(machineId)
    return { metadata }
  }

  // ───────────────────────────── the step machine ─────────────────────────────

  private enqueue<T>(machineId: string, task: () => Promise<T>): Promise<T> {
    const previous = this.queues.get(machineId) ?? Promise.resolve()
    const next = previous.catch(() => undefined).then(task)
    const settled = next.catch(() => undefined)
    this.queues.set(machineId, settled)
    void settled.then(() => { if (this.queues.get(machineId) === settled) this.queues.delete(machineId) })
    return next
  }

  private async runOperation(machine: MachineRow, kind: OperationKind, params: Record<string, unknown>, options: { existing?: OperationRow; resume?: OperationRow } = {}): Promise<unknown> {
    const resume = options.resume
    const op = resume ?? options.existing ?? this.store.beginOperation(machine.id, kind, params)
    const ctx: StepContext = { op, data: {} }
    const steps = this.stepsFor(kind, machine.id, params)
    let startAt = 0
    if (resume) {
      const records = this.store.steps(op.id)
      for (const record of records) if (record.phase === 'done') ctx.data[record.step] = true
      const lastDone = steps.findLastIndex((s) => records.some((r) => r.step === s.name && r.phase === 'done'))
      startAt = lastDone + 1
      this.logger.info('resuming an unfinished operation', { machine: machine.id, kind, step: steps[startAt]?.name ?? '(finished)' })
    }
    let result: unknown
    // One transaction from each step that touches the host to the next: the last one's `done`,
    // every database-only step in between (their records and effects together), and the next
    // one's `begin` — the log is still written before each step runs. A create commits six
    // times instead of twenty.
    let unrecordedDone: string | undefined
    const recordDone = () => { if (unrecordedDone) this.store.recordStep(op.id, unrecordedDone, 'done'); unrecordedDone = undefined }
    try {
      let i = startAt
      for (;;) {
        const ranInTransaction: string[] = []
        let next: Step | undefined
        this.store.transaction(() => {
          recordDone()
          for (let step = steps[i]; step?.runInTransaction; step = steps[++i]) {
            this.store.recordStep(op.id, step.name, 'begin')
            result = step.runInTransaction(ctx)
            this.store.recordStep(op.id, step.name, 'done')
            ranInTransaction.push(step.name)
          }
          next = steps[i]
          if (next) this.store.recordStep(op.id, next.name, 'begin')
          else this.store.finishOperation(op.id, 'done')
        })
        for (const name of ranInTransaction) { this.maybeCrash(kind, name, 'begin'); this.maybeCrash(kind, name, 'done') }
        if (!next) return result
        this.maybeCrash(kind, next.name, 'begin')
        result = await next.run(ctx)
        unrecordedDone = next.name
        if (this.crashPointsArmed()) { recordDone(); this.maybeCrash(kind, next.name, 'done') }
        i++
      }
    } catch (err) {
      recordDone()
      this.logger.warn('operation failed', { machine: machine.id, kind, err })
      await this.failOperation(machine.id, kind, err)
      this.store.finishOperation(op.id, 'failed', err instanceof Error ? err.message : String(err))
      throw err
    }
  }

  /** A failed start leaves nothing running and the Machine `failed`; other failures leave the
   * Machine in the persistent state it was in when it makes sense, else `failed`. */
  private async failOperation(machineId: string, kind: OperationKind, err: unknown): Promise<void> {
    const machine = this.store.getMachine(machineId)
    if (!machine || machine.state === 'destroyed') return
    if (isHangarError(err) && err.code === 'illegal_state') return
    if (kind === 'create') {
      // A create that cannot boot is rolled back whole: the caller gets the error and no
      // half-made Machine stays behind.
      await this.releaseEverything(machine).catch(() => undefined)
      this.setState(machine, 'destroyed', { type: 'launch', status: 'failed', source: 'flyd', request: { error: err instanceof Error ? err.message : String(err) } })
    } else if (['start', 'restart', 'update', 'exit'].includes(kind) && !isSettled(machine.state)) {
      await this.teardownGuest(machine).catch(() => undefined)
      this.setState(machine, 'failed', { type: 'launch', status: 'failed', source: 'flyd', request: { error: err instanceof Error ? err.message : String(err) } })
    } else if (!isSettled(machine.state)) {
      // stop/suspend/destroy failing half-way: look at the guest to say what is true now.
      const status = await this.options.driver.status(machineId)
      this.setState(machine, status === 'running' ? 'started' : status === 'paused' ? 'suspended' : 'stopped')
    }
  }

  /** Crash tests armed a crash point: record each `done` on its own so every point is reachable. */
  private crashPointsArmed(): boolean {
    const file = this.options.crashPointsFile
    if (file === undefined) return false
    try { return statSync(file).size > 0 } catch { return false }
  }

  private maybeCrash(kind: string, step: string, phase: 'begin' | 'done'): void {
    const file = this.options.crashPointsFile
    if (!file || !this.crashPointsArmed()) return
    const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean)
    const point = `${kind}:${step}:${phase}`
    const index = lines.indexOf(point)
    if (index < 0) return
    lines.splice(index, 1)
    writeFileSync(file, lines.join('\n'))
    this.logger.warn('crash point reached: killing the agent', { point })
    process.kill(process.pid, 'SIGKILL')
  }

  private stepsFor(kind: OperationKind, machineId: string, params: Record<string, unknown>): Step[] {
    const m = () => this.store.getMachine(machineId)!
    const enter = (state: MachineState, event?: { type: string; status?: string; source?: 'user' | 'flyd'; request?: Record<string, unknown> }): Step => {
      const enterState = () => { this.setState(m(), state, event ? { type: event.type, status: event.status ?? state, source: event.source ?? 'user', request: event.request } : undefined) }
      return { name: `enter_${state}`, run: async () => enterState(), runInTransaction: enterState }
    }
    const prepareRootfs: Step = { name: 'prepare_rootfs', run: async () => { await this.prepareRootfs(m()) } }
    const writeGuestFiles: Step = { name: 'write_guest_files', run: async () => { this.writeGuestFiles(m()) } }
    const setupNetwork: Step = { name: 'setup_network', run: async () => { await this.setupNetwork(m()) } }
    const launchGuest: Step = { name: 'launch_guest', run: async () => { await this.launchGuest(m()) } }
    const teardown: Step = { name: 'teardown_guest', run: async () => { await this.teardownGuest(m()) } }
    const bootSteps = [prepareRootfs, writeGuestFiles, setupNetwork, launchGuest]
    const stopSignal = String(params.signal ?? DEFAULT_STOP_SIGNAL)
    const stopTimeoutMs = Number(params.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS)
    const stopSteps = (requested: boolean): Step[] => [
      { name: 'thaw_guest', run: async () => { if ((await this.options.driver.status(machineId)) === 'paused') await this.options.driver.resume(machineId) } },
      { name: 'signal_guest', run: async () => { await this.options.driver.kill(machineId, stopSignal) } },
      {
        name: 'await_exit',
        run: async (ctx) => {
          const exit = await this.awaitExit(machineId, stopTimeoutMs)
          ctx.data.exit = { ...exitEvent(exit), requested_stop: requested }
        },
      },
      teardown,
    ]
    switch (kind) {
      case 'create': {
        const { launch } = params as unknown as CreateParams
        const leaseTtl = (params as unknown as CreateParams).leaseTtl
        const lease = () => leaseTtl ? this.acquireLease(m().app, machineId, { ttlSeconds: leaseTtl, description: 'lease created with the machine' }).data.nonce : undefined
        const issueLease: Step = { name: 'issue_lease', run: async () => lease(), runInTransaction: lease }
        const recordCreated = () => { this.setState(m(), launch ? 'creating' : 'created', { type: 'launch', status: 'created', source: 'user' }) }
        const record: Step = { name: 'record_created', run: async () => recordCreated(), runInTransaction: recordCreated }
        if (!launch) return [record, issueLease]
        return [record, enter('starting'), ...bootSteps, enter('started', { type: 'start', source: 'user' }), issueLease]
      }
      case 'start': {
        if (params.resume === true) {
          return [
            enter('starting'),
            { name: 'thaw_guest', run: async () => { await this.options.driver.resume(machineId) } },
            enter('started', { type: 'start', source: 'user', request: { resumed: true } }),
          ]
        }
        return [enter('starting'), ...bootSteps, enter('started', { type: 'start', source: 'user' })]
      }
      case 'stop':
        return [
          enter('stopping', { type: 'stop', source: 'user' }),
          ...stopSteps(true),
          { name: 'enter_stopped', run: async (ctx) => { this.setState(m(), 'stopped', { type: 'exit', status: 'stopped', source: 'flyd', request: { exit_event: ctx.data.exit as ExitEvent | undefined ?? unknownExit(true) } }) } },
        ]
      case 'suspend':
        return [
          enter('suspending', { type: 'suspend', source: 'user' }),
          { name: 'freeze_guest', run: async () => { if ((await this.options.driver.status(machineId)) !== 'paused') await this.options.driver.pause(machineId) } },
          enter('suspended', { type: 'suspend', status: 'suspended', source: 'flyd' }),
        ]
      case 'restart':
        return [enter('restarting', { type: 'restart', source: 'user' }), ...stopSteps(true), ...bootSteps, enter('started', { type: 'restart', status: 'started', source: 'flyd' })]
      case 'update': {
        const version = params.version as Parameters<AgentStore['setVersion']>[2]
        const previousState = params.previousState as MachineState
        const applyVersion: Step = {
          name: 'apply_version',
          run: async () => {
            const current = m()
            if (current.instanceId !== version.instanceId) this.store.setVersion(machineId, current.instanceId, version)
          },
        }
        if (previousState === 'started' || previousState === 'suspended') {
          const relaunch = params.skipLaunch === true
            ? [enter('stopped', { type: 'update', status: 'stopped', source: 'flyd' })]
            : [...bootSteps, enter('started', { type: 'update', status: 'started', source: 'flyd' })]
          return [enter('replacing', { type: 'update', status: 'replacing', source: 'user' }), ...stopSteps(true), applyVersion, ...relaunch]
        }
        // reference §1.6: a Machine not running before an update stays that way.
        return [enter('updating', { type: 'update', status: 'updating', source: 'user' }), applyVersion, enter(previousState === 'created' ? 'created' : 'stopped', { type: 'update', status: previousState === 'created' ? 'created' : 'stopped', source: 'flyd' })]
      }
      case 'destroy':
        return [
          enter('destroying', { type: 'destroy', source: 'user' }),
          {
            name: 'kill_guest',
            run: async () => {
              const status = await this.options.driver.status(machineId)
              if (status === 'absent' || status === 'stopped') return
              if (status === 'paused') await this.options.driver.resume(machineId)
              await this.options.driver.kill(machineId, 'SIGKILL')
              await this.awaitExit(machineId, KILL_GRACE_MS)
            },
          },
          { name: 'release_all', run: async () => { await this.releaseEverything(m()) } },
          enter('destroyed', { type: 'destroy', status: 'destroyed', source: 'flyd' }),
        ]
      case 'signal':
        return [{ name: 'send_signal', run: async () => { await this.options.driver.kill(machineId, String(params.signal)) } }]
      case 'exec':
        // An exec cut off by a crash cannot be resumed: its caller is gone. Recovery fails it.
        return [{ name: 'run_exec', run: async () => { throw new ConflictError('exec was interrupted by an agent restart') } }]
      case 'exit': {
        const decision = params as unknown as ExitDecision
        const exitRecord: Step = {
          name: 'record_exit',
          run: async () => {
            this.store.setRestartCount(machineId, decision.restartCount)
            this.store.addEvent(machineId, { type: 'exit', status: decision.action === 'restart' ? 'restarting' : 'stopped', source: 'flyd', request: { exit_event: { ...decision.exit, restarting: decision.action === 'restart' }, restart_count: decision.restartCount } })
          },
        }
        if (decision.action === 'restart') {
          const backoffMs = Math.min(100 * 2 ** Math.max(decision.restartCount - 1, 0), 5_000)
          return [
            exitRecord, enter('starting'), teardown,
            { name: 'restart_backoff', run: async () => { await delay(backoffMs) } },
            ...bootSteps, enter('started', { type: 'start', source: 'flyd', request: { restart_count: decision.restartCount } }),
          ]
        }
        if (decision.action === 'destroy') {
          return [exitRecord, enter('destroying', { type: 'destroy', source: 'flyd', request: { auto_destroy: true } }), { name: 'release_all', run: async () => { await this.releaseEverything(m()) } }, enter('destroyed', { type: 'destroy', status: 'destroyed', source: 'flyd' })]
        }
        return [exitRecord, teardown, enter('stopped')]
      }
    }
  }

  private stopParams(stopConfig: StopConfig | undefined, request: { signal?: string; timeout?: string | number }): { signal: string; timeoutMs: number } {
    const signal = normaliseSignal(request.signal ?? stopConfig?.signal ?? DEFAULT_STOP_SIGNAL)
    const timeout = request.timeout ?? stopConfig?.timeout
    const timeoutMs = timeout === undefined ? DEFAULT_STOP_TIMEOUT_MS : typeof timeout === 'number' && timeout < 1e6 ? timeout * 1000 : parseDurationMs(timeout, 'timeout')
    return { signal, timeoutMs: Math.min(timeoutMs, 5 * 60_000) }
  }

  // ───────────────────────────── guests ─────────────────────────────

  private machineDir(machineId: string): string {
    return join(this.machinesDir, machineId)
  }

  private async pullImage(ref: string): Promise<AgentImage> {
    const image = await this.options.images.pull(ref)
    this.images.set(image.digest, image)
    return image
  }

  private async imageFor(machine: MachineRow): Promise<AgentImage> {
    const cached = this.images.get(machine.imageDigest)
    if (cached) return cached
    const ref = `${machine.imageRef.registry}/${machine.imageRef.repository}@${machine.imageDigest}`
    return this.pullImage(ref)
  }

  private async prepareRootfs(machine: MachineRow): Promise<string> {
    // The image port makes the Machine's dir (and the rootfs dirs in it) as it needs them.
    return this.options.images.prepareRootfs(await this.imageFor(machine), this.machineDir(machine.id))
  }

  private rootfsPath(machine: MachineRow): string {
    return join(this.machineDir(machine.id), 'rootfs')
  }

  /** config.files, written at every boot into the writable layer (which a stop wipes). Fly's
   * /etc/hosts, /etc/resolv.conf and /etc/hostname are not written here: the runtime bind-mounts
   * them (launchGuest), as Docker does. */
  private writeGuestFiles(machine: MachineRow): void {
    const rootfs = this.rootfsPath(machine)
    let secrets: Record<string, string> | undefined
    for (const file of machine.config.files ?? []) {
      if (file.raw_value !== undefined) {
        writeGuestFile(rootfs, file.guest_path, Buffer.from(file.raw_value, 'base64'), file.mode ?? 0o644)
      } else if (file.secret_name !== undefined) {
        // reference §1.5 files[].secret_name: the secret holds the file's content, base64-encoded.
        secrets ??= this.openSecrets(machine.id)
        const value = secrets[file.secret_name]
        if (value === undefined) throw new UnprocessableError(`files: ${file.guest_path} names the secret ${file.secret_name}, which the app does not have`)
        writeGuestFile(rootfs, file.guest_path, Buffer.from(value, 'base64'), file.mode ?? 0o644)
      }
    }
  }

  private async setupNetwork(machine: MachineRow): Promise<string> {
    return setupMachineNetwork({
      machineId: machine.id, bridge: this.options.bridge, ipv4: machine.ipv4, ipv4Prefix: this.subnet.prefix,
      gatewayIpv4: gatewayIpv4(this.subnet), sixpn: machine.privateIp,
    })
  }

  private async launchGuest(machine: MachineRow): Promise<void> {
    const status = await this.options.driver.status(machine.id)
    if (status === 'running') return // an interrupted launch got this far: adopt it
    const rootfs = this.rootfsPath(machine)
    const plan = processPlan(machine, machine.config, machine.imageConfig, this.guestSecrets(machine))
    const dir = this.machineDir(machine.id)
    await this.options.driver.launch({
      machineId: machine.id, rootfs, args: plan.args, env: plan.env, cwd: plan.cwd,
      user: resolveUser(rootfs, plan.user), hostname: machine.id, netnsPath: `/var/run/netns/hangar-${machine.id}`,
      memoryMb: machine.config.guest?.memory_mb ?? DEFAULT_MEMORY_MB, cpus: machine.config.guest?.cpus ?? DEFAULT_CPUS,
      cpuKind: machine.config.guest?.cpu_kind === 'performance' ? 'performance' : 'shared',
      logPath: join(dir, 'ctr.log'), logMaxBytes: this.options.logMaxBytes ?? 1024 * 1024,
      files: [
        { path: '/etc/hosts', content: etcHosts(machine) },
        { path: '/etc/resolv.conf', content: resolvConf(machine.config, this.nameservers) },
        { path: '/etc/hostname', content: `${machine.id}\n` },
      ],
    })
  }

  private async teardownGuest(machine: MachineRow): Promise<void> {
    this.tailer.unfollow(machine.id)
    this.stopChecks(machine.id)
    await this.options.driver.remove(machine.id)
    // With the guest gone, its network and its rootfs are independent: undo both at once.
    await Promise.all([
      teardownMachineNetwork(machine.id, machine.privateIp),
      this.options.images.resetRootfs(this.machineDir(machine.id)),
    ])
  }

  private async releaseEverything(machine: MachineRow): Promise<void> {
    this.tailer.unfollow(machine.id)
    this.stopChecks(machine.id)
    await this.options.driver.remove(machine.id)
    await teardownMachineNetwork(machine.id, machine.privateIp)
    await this.options.images.releaseRootfs(this.machineDir(machine.id))
    rmSync(this.machineDir(machine.id), { recursive: true, force: true })
    this.store.deleteLease(machine.id)
    this.store.deleteSecrets(machine.id)
  }

  /** Waits for the guest's exit; past `timeoutMs` it is killed (SIGKILL) and waited for again. */
  private async awaitExit(machineId: string, timeoutMs: number): Promise<GuestExit> {
    const first = await this.exitWithin(machineId, timeoutMs)
    if (first) return first
    this.logger.info('stop timeout passed: killing the guest', { machine: machineId })
    await this.options.driver.kill(machineId, 'SIGKILL')
    const second = await this.exitWithin(machineId, KILL_GRACE_MS)
    if (second) return second
    return { exitCode: 137, signal: 9, oomKilled: false, exitedAt: new Date() }
  }

  private async exitWithin(machineId: string, timeoutMs: number): Promise<GuestExit | undefined> {
    const recorded = await this.recordedExit(machineId)
    if (recorded) return recorded
    return new Promise<GuestExit | undefined>((resolve) => {
      const waiters = this.exitWaiters.get(machineId) ?? new Set()
      this.exitWaiters.set(machineId, waiters)
      let poll: NodeJS.Timeout | undefined
      const done = (exit: GuestExit | undefined) => {
        waiters.delete(waiter)
        if (waiters.size === 0) this.exitWaiters.delete(machineId)
        clearTimeout(timer)
        if (poll) clearInterval(poll)
        resolve(exit)
      }
      const waiter = (exit: GuestExit) => done(exit)
      waiters.add(waiter)
      const timer = setTimeout(() => done(undefined), timeoutMs)
      // The exit file is the normal signal; a monitor that died without writing one is caught here.
      poll = setInterval(async () => { const exit = await this.recordedExit(machineId); if (exit) done(exit) }, 500)
    })
  }

  /** The guest's exit as its monitor recorded it, or a synthetic one when the guest and its
   * monitor are both gone without a record (the host killed them). */
  private async recordedExit(machineId: string): Promise<GuestExit | undefined> {
    const exit = await this.options.driver.exitStatus(machineId)
    if (exit) return exit
    const status = await this.options.driver.status(machineId)
    if (status === 'absent' || status === 'stopped') {
      // The monitor writes the exit file just after the guest ends: give it a moment before
      // concluding that it died too and nobody recorded how the guest exited.
      for (let i = 0; i < 100; i++) {
        const late = await this.options.driver.exitStatus(machineId)
        if (late) return late
        await delay(20)
      }
      return { exitCode: 137, signal: 9, oomKilled: false, exitedAt: new Date() }
    }
    return undefined
  }

  private onGuestExit(machineId: string): void {
    if (this.closed) return
    const waiters = this.exitWaiters.get(machineId)
    if (waiters?.size) {
      void this.options.driver.exitStatus(machineId).then((exit) => { if (exit) for (const waiter of [...waiters]) waiter(exit) })
      return
    }
    void this.enqueue(machineId, () => this.handleUnrequestedExit(machineId)).catch((err) => this.logger.error('handling a guest exit failed', { machine: machineId, err }))
  }

  /** A guest ended on its own: apply the restart policy (reference §1.5 `restart`, `auto_destroy`). */
  private async handleUnrequestedExit(machineId: string): Promise<void> {
    const machine = this.store.getMachine(machineId)
    if (!machine || machine.state !== 'started') return
    const guestExit = await this.recordedExit(machineId)
    if (!guestExit) return
    const exit = exitEvent(guestExit)
    const policy = machine.config.restart?.policy ?? 'on-failure'
    const maxRetries = machine.config.restart?.max_retries ?? DEFAULT_MAX_RETRIES
    const failed = exit.exit_code !== 0 || exit.oom_killed
    const restart = policy === 'always' || (policy === 'on-failure' && failed && machine.restartCount < maxRetries)
    const action: ExitDecision['action'] = restart ? 'restart' : machine.config.auto_destroy ? 'destroy' : 'stop'
    const decision: ExitDecision = { exit, action, restartCount: restart ? machine.restartCount + 1 : machine.restartCount }
    this.logger.info('guest exited', { machine: machineId, exitCode: exit.exit_code, oomKilled: exit.oom_killed, action })
    await this.runOperation(machine, 'exit', decision as unknown as Record<string, unknown>).catch(() => undefined)
  }

  // ───────────────────────────── secrets ─────────────────────────────

  private storeSecrets(machineId: string, secrets: Record<string, string>): void {
    this.store.putSecrets(machineId, seal(this.secretsKey, Buffer.from(JSON.stringify(secrets)), Buffer.from(`machine-secrets\0${machineId}`)))
  }

  private openSecrets(machineId: string): Record<string, string> {
    const sealed = this.store.getSecrets(machineId)
    if (!sealed) return {}
    try {
      return JSON.parse(openSealed(this.secretsKey, sealed, Buffer.from(`machine-secrets\0${machineId}`)).toString('utf8')) as Record<string, string>
    } catch (err) {
      // The message names the Machine, never a value.
      if (err instanceof SealedBoxError) throw new UnprocessableError(`the secrets of machine ${machineId} do not open with this host's key (${SECRETS_KEY_FILE} was replaced?); update the Machine to send them again`)
      throw err
    }
  }

  /** The secrets the guest's env gets (reference §1.5 processes[].secrets, ignore_app_secrets). */
  private guestSecrets(machine: MachineRow): Record<string, string> {
    const all = this.openSecrets(machine.id)
    const process = machine.config.processes?.[0]
    const env: Record<string, string> = process?.ignore_app_secrets ? {} : { ...all }
    for (const ref of process?.secrets ?? []) if (all[ref.name] !== undefined) env[ref.env_var] = all[ref.name]!
    return env
  }

  private startChecks(machine: MachineRow): void {
    this.stopChecks(machine.id)
    const definitions = checkDefinitions(machine.config)
    if (definitions.length === 0) return
    this.checks.set(machine.id, new MachineChecks(definitions, machine.ipv4, () => this.changed(machine.id)))
  }

  private stopChecks(machineId: string): void {
    this.checks.get(machineId)?.stop()
    this.checks.delete(machineId)
  }

  // ───────────────────────────── state ─────────────────────────────

  private setState(machine: MachineRow, state: MachineState, event?: { type: string; status: string; source: 'user' | 'flyd'; request?: Record<string, unknown> }): void {
    this.store.transaction(() => {
      this.store.setState(machine.id, state)
      if (event) this.store.addEvent(machine.id, event)
    })
    if (state === 'started') {
      const latest = this.store.getMachine(machine.id)!
      this.startChecks(latest)
      this.tailer.follow({ machineId: machine.id, app: machine.app, region: machine.region, path: join(this.machineDir(machine.id), 'ctr.log') }, true)
    }
    this.changed(machine.id)
  }

  /** A Machine changed: local waiters hear at once; the platform (NATS, catalog, proxies) gets
   * the Machine's latest view a few ms later, so the burst of states one operation passes
   * through (creating → starting → started) goes out once, as where it landed. */
  private changed(machineId: string): void {
    const waiters = this.stateWaiters.get(machineId)
    if (waiters) for (const waiter of [...waiters]) waiter()
    if (this.publishTimers.has(machineId)) return
    const timer = setTimeout(() => { this.publishTimers.delete(machineId); this.publish(machineId) }, PUBLISH_COALESCE_MS)
    this.publishTimers.set(machineId, timer)
  }

  private publish(machineId: string): void {
    const machine = this.store.getMachine(machineId)
    if (!machine) return
    const view = this.machineView(machine)
    try {
      if (machine.state === 'destroyed') this.options.events?.machineRemoved?.(view)
      else this.options.events?.machineChanged?.(view, machine.ipv4)
    } catch (err) {
      this.logger.error('publishing a machine change failed', { err })
    }
  }

  private waitForStateChange(machineId: string, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const waiters = this.stateWaiters.get(machineId) ?? new Set()
      this.stateWaiters.set(machineId, waiters)
      const done = () => { clearTimeout(timer); waiters.delete(done); if (waiters.size === 0) this.stateWaiters.delete(machineId); resolve() }
      const timer = setTimeout(done, timeoutMs)
      waiters.add(done)
    })
  }

  private requireMachine(app: string, machineId: string, includeDestroyed = false): MachineRow {
    const machine = this.store.getMachine(machineId)
    if (!machine || machine.app !== app || (!includeDestroyed && machine.state === 'destroyed')) throw new NotFoundError(`machine ${machineId}`)
    return machine
  }

  /** The checks every mutation passes: the Machine exists, its state allows the action, and a
   * held lease is presented (reference §1.1: `fly-machine-lease-nonce` on mutations). */
  private checkMutation(app: string, machineId: string, action: Parameters<typeof assertActionAllowed>[0], nonce?: string): MachineRow {
    const machine = this.requireMachine(app, machineId)
    const lease = this.activeLease(machineId)
    if (lease && lease.nonce !== nonce) throw new ConflictError(`machine ${machineId} has an active lease; send its nonce in the fly-machine-lease-nonce header`)
    assertActionAllowed(action, machine.state)
    return machine
  }

  // ───────────────────────────── recovery ─────────────────────────────

  /** After a restart (or a kill -9): finish every unfinished operation, then make every Machine's
   * recorded state true of its guest, then remove what no Machine owns. */
  private async recover(): Promise<void> {
    for (const op of this.store.runningOperations()) {
      const machine = this.store.getMachine(op.machineId)
      if (!machine) { this.store.finishOperation(op.id, 'rolled_back', 'machine record missing'); continue }
      if (op.kind === 'exec') { this.store.finishOperation(op.id, 'failed', 'interrupted by an agent restart'); continue }
      await this.enqueue(machine.id, () => this.runOperation(machine, op.kind, op.params, { resume: op })).catch((err) => {
        this.logger.warn('an unfinished operation could not be completed after restart', { machine: machine.id, kind: op.kind, err })
      })
    }
    const live = this.store.liveMachines()
    const known = new Set(live.map((m) => m.id))
    for (const machine of live) {
      const status = await this.options.driver.status(machine.id)
      if (machine.state === 'started') {
        if (status === 'running') {
          this.startChecks(machine)
          this.tailer.follow({ machineId: machine.id, app: machine.app, region: machine.region, path: join(this.machineDir(machine.id), 'ctr.log') })
          // The guest may have exited while nobody watched; the exit file says so.
          if (await this.options.driver.exitStatus(machine.id)) this.onGuestExit(machine.id)
        } else {
          this.onGuestExit(machine.id)
        }
      } else if (machine.state === 'suspended') {
        if (status !== 'paused') {
          this.logger.warn('a suspended machine lost its guest; marking it stopped', { machine: machine.id })
          await this.teardownGuest(machine)
          this.setState(machine, 'stopped', { type: 'exit', status: 'stopped', source: 'flyd', request: { exit_event: unknownExit(false) } })
        }
      } else if (status !== 'absent') {
        this.logger.warn('removing a guest left behind by a machine that is not running', { machine: machine.id, state: machine.state })
        await this.teardownGuest(machine)
      }
    }
    // Guests, namespaces and mounts that belong to no live Machine (destroyed mid-way, or never recorded).
    for (const id of await this.options.driver.list()) {
      if (!known.has(id)) { this.logger.warn('removing an unknown guest', { machine: id }); await this.options.driver.remove(id) }
    }
    for (const id of listMachineNetns()) {
      const owner = this.store.getMachine(id)
      if (owner && !known.has(id)) await teardownMachineNetwork(id, owner.privateIp)
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.stopExitWatch?.()
    await Promise.allSettled([...this.queues.values()])
    for (const [id, timer] of this.publishTimers) { clearTimeout(timer); this.publish(id) }
    this.publishTimers.clear()
    for (const id of [...this.checks.keys()]) this.stopChecks(id)
    this.tailer.close()
    this.store.close()
  }
}

// ───────────────────────────── helpers ─────────────────────────────

const SECRETS_KEY_FILE = 'secrets.key'

/** The host's key for Machine secrets at rest: 32 random bytes, created once, mode 0600. */
function loadSecretsKey(path: string): Buffer {
  try {
    const fd = openSync(path, 'wx', 0o600)
    try { writeSync(fd, randomKey()) } finally { closeSync(fd) }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  }
  chmodSync(path, 0o600)
  const key = readFileSync(path)
  if (key.length !== 32) throw new InvalidArgumentError(`${path} must hold a 32-byte key, not ${key.length} bytes`)
  return key
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms))

function exitEvent(exit: GuestExit): ExitEvent {
  return {
    exit_code: exit.exitCode, guest_exit_code: exit.signal ? 0 : exit.exitCode, guest_signal: exit.signal,
    oom_killed: exit.oomKilled, requested_stop: false, restarting: false, signal: exit.signal, exited_at: exit.exitedAt.toISOString(),
  }
}

function unknownExit(requested: boolean): ExitEvent {
  return { exit_code: -1, guest_exit_code: -1, guest_signal: 0, oom_killed: false, requested_stop: requested, restarting: false, signal: -1, exited_at: new Date().toISOString() }
}

function leaseResponse(lease: { nonce: string; expiresAt: number; owner: string; description: string; version: string }) {
  return { status: 'success' as const, data: { nonce: lease.nonce, expires_at: lease.expiresAt, owner: lease.owner, description: lease.description, version: lease.version } }
}

function validateMetadataKey(key: string): void {
  if (!/^[A-Za-z0-9_.-]{1,63}$/.test(key)) throw new InvalidArgumentError(`metadata key "${key.slice(0, 70)}" must be 1–63 letters, digits, '_', '.' or '-'`)
}

/** Normalises what the API already validated: autostop words, default guest. */
function normaliseConfig(config: MachineConfig): MachineConfig {
  const copy: MachineConfig = structuredClone(config)
  for (const service of copy.services ?? []) {
    if (service.autostop === true) service.autostop = 'stop'
    else if (service.autostop === false) service.autostop = 'off'
  }
  return copy
}

/** Writes a file inside the guest's rootfs without following the guest's symlinks out of it. */
function writeGuestFile(rootfs: string, guestPath: string, content: string | Buffer, mode: number): void {
  const relative = normalize(guestPath).replace(/^\/+/, '')
  if (!guestPath.startsWith('/') || relative.startsWith('..') || relative === '') throw new InvalidArgumentError(`files: guest_path "${guestPath}" must be an absolute path inside the Machine`)
  const target = join(rootfs, relative)
  mkdirSync(dirname(target), { recursive: true })
  rmSync(target, { force: true })
  writeFileSync(target, content, { mode })
  chmodSync(target, mode)
}
