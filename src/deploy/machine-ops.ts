import type { CreateMachineRequest, Machine, MachineConfig } from '../core/index.js'
import { expectedCheckCount, healthOf } from './plan.js'
import type { DeployApi, Progress } from './ports.js'
import { DeployAbortedError } from './errors.js'

// The Machine steps every strategy is made of — create, replace (cordon, drain, update, wait for
// health, uncordon), restore, destroy, wait healthy — each reporting what it waits for. A step
// that fails throws; undoing is the strategy's business (deployer.ts).

export interface MachineOpsOptions {
  api: DeployApi
  app: string
  progress: Progress
  /** How long a Machine may take to start and pass its checks (fly.toml [deploy] wait_timeout). */
  waitTimeoutMs: number
  pollIntervalMs: number
  /** After cordoning a Machine that takes traffic, wait this long before stopping it, so proxies
   * have stopped sending it new requests. */
  drainMs: number
  /** A Machine without checks must stay up this long after starting to count as healthy. */
  smokeMs: number
  /** How long a rollback waits for a restored Machine (default: the wait timeout, at least 60 s:
   * the previous release is known to work, so giving up early would only leave it down). */
  restoreTimeoutMs?: number
}

export const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export class MachineOps {
  constructor(readonly options: MachineOpsOptions) {}

  get app(): string { return this.options.app }

  /** Polls the Machine until it is started at `version` with every check passing. */
  async waitHealthy(machineId: string, expect: { version?: string; config: MachineConfig; label: string; timeoutMs?: number }): Promise<Machine> {
    const { api, app, progress, pollIntervalMs, smokeMs } = this.options
    const waitTimeoutMs = expect.timeoutMs ?? this.options.waitTimeoutMs
    const expectedChecks = expectedCheckCount(expect.config)
    const deadline = Date.now() + waitTimeoutMs
    let lastReason = ''
    for (;;) {
      const machine = await api.getMachine(app, machineId)
      const verdict = healthOf(machine, { version: expect.version, expectedChecks })
      if (verdict.kind === 'failed') throw new DeployAbortedError(`${expect.label}: ${verdict.reason}`)
      if (verdict.kind === 'healthy') {
        if (expectedChecks > 0 || smokeMs <= 0) return machine
        return this.#smoke(machine, expect.label)
      }
      if (verdict.reason !== lastReason) {
        lastReason = verdict.reason
        progress({ step: 'health', message: `  ${expect.label}: ${verdict.reason}`, machineId })
      }
      if (Date.now() > deadline) throw new DeployAbortedError(`${expect.label}: not healthy within ${Math.round(waitTimeoutMs / 1000)}s — ${verdict.reason}`)
      await delay(pollIntervalMs)
    }
  }

  /** Without checks, "healthy" means the process stays up: no exit for smokeMs after starting. */
  async #smoke(machine: Machine, label: string): Promise<Machine> {
    const { api, app, pollIntervalMs, smokeMs, progress } = this.options
    const since = Date.now()
    progress({ step: 'health', message: `  ${label}: started, no health checks; watching it stay up for ${(smokeMs / 1000).toFixed(1)}s`, machineId: machine.id })
    let current = machine
    while (Date.now() - since < smokeMs) {
      await delay(pollIntervalMs)
      current = await api.getMachine(app, machine.id)
      const exit = current.events.find((e) => e.type === 'exit' && e.timestamp >= since - pollIntervalMs)
      if (current.state !== 'started' || exit) {
        const code = exit?.request?.exit_event?.exit_code
        throw new DeployAbortedError(`${label}: Machine ${machine.id} did not stay up (${exit ? `its process exited${code !== undefined ? ` with code ${code}` : ''}` : `it is ${current.state}`})`)
      }
    }
    return current
  }

  async create(request: CreateMachineRequest, label: string): Promise<Machine> {
    this.options.progress({ step: 'create', message: `${label}: creating a Machine (image ${request.config.image})` })
    const machine = await this.options.api.createMachine(this.app, request)
    this.options.progress({ step: 'create', message: `${label}: created ${machine.id} in ${machine.region}`, machineId: machine.id })
    return machine
  }

  async cordon(machine: Machine, label: string): Promise<void> {
    this.options.progress({ step: 'cordon', message: `${label}: cordoning ${machine.id} (no new traffic), draining ${this.options.drainMs} ms`, machineId: machine.id })
    await this.options.api.cordonMachine(this.app, machine.id)
    await delay(this.options.drainMs)
  }

  async uncordon(machineId: string, label: string): Promise<void> {
    this.options.progress({ step: 'uncordon', message: `${label}: ${machineId} takes traffic`, machineId })
    await this.options.api.uncordonMachine(this.app, machineId)
  }

  /** A Machine takes proxy traffic when it runs and has services; those are drained first. */
  takesTraffic(machine: Machine): boolean {
    return machine.state === 'started' && !machine.cordoned && (machine.config.services?.length ?? 0) > 0
  }

  /** Updates one Machine to `config`; a Machine that was started must come back healthy. */
  async replace(machine: Machine, config: MachineConfig, label: string, journal: ReplaceJournal): Promise<Machine> {
    const entry: ReplaceEntry = { before: machine, cordoned: false, updated: false }
    journal.push(entry)
    if (this.takesTraffic(machine)) {
      await this.cordon(machine, label)
      entry.cordoned = true
    }
    this.options.progress({ step: 'update', message: `${label}: updating ${machine.id} to ${config.image}`, machineId: machine.id })
    const updated = await this.options.api.updateMachine(this.app, machine.id, { config, current_version: machine.instance_id })
    entry.updated = true
    const wasRunning = machine.state === 'started'
    const healthy = wasRunning ? await this.waitHealthy(machine.id, { version: updated.instance_id, config, label }) : updated
    if (entry.cordoned) {
      await this.uncordon(machine.id, label)
      entry.cordoned = false
    }
    return healthy
  }

  /** Puts back what `replace` changed: the previous config (and so the previous release), then
   * traffic. Best effort: every Machine is tried; the failures are returned. */
  async restore(journal: ReplaceJournal): Promise<string[]> {
    const failures: string[] = []
    for (const entry of [...journal].reverse()) {
      const { before } = entry
      const label = `rollback ${before.id}`
      try {
        if (entry.updated) {
          this.options.progress({ step: 'rollback', message: `${label}: restoring ${before.config.image}`, machineId: before.id })
          const current = await this.options.api.getMachine(this.app, before.id)
          const restored = await this.options.api.updateMachine(this.app, before.id, { config: before.config, current_version: current.instance_id })
          const timeoutMs = this.options.restoreTimeoutMs ?? Math.max(this.options.waitTimeoutMs, 60_000)
          if (before.state === 'started') await this.waitHealthy(before.id, { version: restored.instance_id, config: before.config, label, timeoutMs })
        }
        if (entry.cordoned) await this.uncordon(before.id, label)
      } catch (err) {
        failures.push(`${before.id}: ${(err as Error).message}`)
      }
    }
    return failures
  }

  async destroy(machineId: string, label: string): Promise<void> {
    this.options.progress({ step: 'destroy', message: `${label}: destroying ${machineId}`, machineId })
    await this.options.api.destroyMachine(this.app, machineId, true)
  }
}

export interface ReplaceEntry { before: Machine; cordoned: boolean; updated: boolean }
export type ReplaceJournal = ReplaceEntry[]
