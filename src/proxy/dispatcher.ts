import type { Logger, MachineController } from '../core/index.js'
import { pickCandidate, loadBucket, LoadBucket } from './balancer.js'
import type { ProxyMetrics, RefusalReason } from './metrics.js'
import type { MachineEntry, RoutingTable, ServiceGroup } from './routing-table.js'

// Where a connection or request gets its Machine: the balancer's pick when one is under its hard
// limit, else a bounded queue that hands out capacity as it frees (reference §4.1: "past all hard
// limits, requests are queued"; sustained overload answers 503), and autostart when every running
// Machine is over soft or none runs (reference §4.3), one start per service at a time.
//
// acquire() counts the load on the Machine it returns; the caller calls release() exactly once.

export class RefusedError extends Error {
  readonly reason: RefusalReason
  constructor(reason: RefusalReason, message: string) {
    super(message)
    this.reason = reason
    this.name = 'RefusedError'
  }
}

export interface QueueLimits {
  /** Waiters per service beyond which new arrivals are refused at once. */
  maxQueueLength: number
  /** How long a waiter waits for capacity before it is refused (HTTP 503 / TCP close). */
  maxWaitMs: number
  /** How long a request waits for an autostarted Machine. */
  startTimeoutMs: number
}

export const DEFAULT_QUEUE_LIMITS: QueueLimits = { maxQueueLength: 1024, maxWaitMs: 10_000, startTimeoutMs: 30_000 }

export type Accept = (entry: MachineEntry) => boolean

interface Waiter {
  accept: Accept | undefined
  resolve: (entry: MachineEntry) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
  done: boolean
}

interface GroupState {
  queue: Waiter[]
  starting: MachineEntry | undefined
}

export interface DispatcherOptions {
  table: RoutingTable
  controller: MachineController | undefined
  metrics: ProxyMetrics
  limits: QueueLimits
  logger: Logger
  random?: () => number
  now?: () => number
}

export class Dispatcher {
  private readonly states = new Map<ServiceGroup, GroupState>()
  private readonly options: DispatcherOptions
  private readonly random: () => number
  private closed = false

  constructor(options: DispatcherOptions) {
    this.options = options
    this.random = options.random ?? Math.random
    options.table.onGroupChange((group) => {
      const state = this.states.get(group)
      if (state !== undefined && group.machines.length === 0 && state.queue.length === 0 && state.starting === undefined) {
        this.states.delete(group)
        options.metrics.setQueueDepth(group.key, undefined)
      }
      this.drain(group)
    })
  }

  private state(group: ServiceGroup): GroupState {
    let state = this.states.get(group)
    if (!state) {
      state = { queue: [], starting: undefined }
      this.states.set(group, state)
      this.options.metrics.setQueueDepth(group.key, () => state!.queue.length)
    }
    return state
  }

  queueDepth(group: ServiceGroup): number {
    return this.states.get(group)?.queue.length ?? 0
  }

  /** The fast path: a Machine under its soft limit, counted, with no allocation. */
  tryAcquire(group: ServiceGroup, accept?: Accept): MachineEntry | undefined {
    const entry = pickCandidate(group.routable, this.random, accept)
    if (entry === undefined || loadBucket(entry) !== LoadBucket.UnderSoft) return undefined
    entry.load++
    return entry
  }

  /** A Machine for one connection or request: at once, after an autostart, or from the queue. */
  acquire(group: ServiceGroup, accept?: Accept): MachineEntry | Promise<MachineEntry> {
    if (this.closed) return Promise.reject(new RefusedError('closing', 'the proxy is shutting down'))
    const entry = pickCandidate(group.routable, this.random, accept)
    const bucket = entry === undefined ? LoadBucket.AtHard : loadBucket(entry)
    if (entry !== undefined && bucket === LoadBucket.UnderSoft) {
      entry.load++
      return entry
    }
    // reference §4.3: every running Machine over soft (or none running) → start the nearest
    // stopped or suspended one and hold the request until it is up.
    const started = this.maybeAutostart(group, accept)
    if (!started && entry !== undefined) {
      entry.load++
      return entry
    }
    const state = this.state(group)
    // Refuse only when no Machine is about to be usable: one that is starting, or stopping with
    // autostart on (the route may show 'stopped' a moment after an autostop; drain() starts it).
    const autostart = group.spec.autostart && this.options.controller !== undefined
    if (!started && entry === undefined && state.starting === undefined && !group.machines.some((m) => (m.recovering || m.settling(autostart)) && (accept === undefined || accept(m)))) {
      return Promise.reject(new RefusedError('no_machines', `no started Machine of app ${group.app} can take this request`))
    }
    return this.enqueue(group, accept, started || state.starting !== undefined ? this.options.limits.startTimeoutMs : this.options.limits.maxWaitMs)
  }

  release(entry: MachineEntry, group: ServiceGroup): void {
    entry.load--
    entry.lastActiveAt = Date.now()
    const state = this.states.get(group)
    if (state !== undefined && state.queue.length > 0) this.drain(group)
  }

  /** Load on a Machine of the group went down outside release() (a load report): waiters may go. */
  wake(group: ServiceGroup): void {
    const state = this.states.get(group)
    if (state !== undefined && state.queue.length > 0) this.drain(group)
  }

  private enqueue(group: ServiceGroup, accept: Accept | undefined, waitMs: number): Promise<MachineEntry> {
    const state = this.state(group)
    if (state.queue.length >= this.options.limits.maxQueueLength) {
      return Promise.reject(new RefusedError('queue_full', `every Machine of app ${group.app} is at its hard limit and ${state.queue.length} requests already wait`))
    }
    return new Promise<MachineEntry>((resolve, reject) => {
      const waiter: Waiter = {
        accept,
        resolve,
        reject,
        done: false,
        timer: setTimeout(() => {
          if (waiter.done) return
          waiter.done = true
          const i = state.queue.indexOf(waiter)
          if (i >= 0) state.queue.splice(i, 1)
          reject(new RefusedError('queue_timeout', `no Machine of app ${group.app} had capacity within ${waitMs} ms`))
        }, waitMs),
      }
      state.queue.push(waiter)
    })
  }

  /** Hands freed capacity to waiters in arrival order. */
  private drain(group: ServiceGroup): void {
    const state = this.states.get(group)
    if (state === undefined || state.queue.length === 0) return
    for (let i = 0; i < state.queue.length;) {
      const waiter = state.queue[i]!
      const entry = pickCandidate(group.routable, this.random, waiter.accept)
      if (entry === undefined) {
        if (waiter.accept === undefined) break // nothing has capacity for anyone
        i++
        continue
      }
      state.queue.splice(i, 1)
      waiter.done = true
      clearTimeout(waiter.timer)
      entry.load++
      waiter.resolve(entry)
    }
    if (state.queue.length > 0 && state.starting === undefined) {
      // Waiters that no running Machine can take: a Machine may have stopped under them.
      if (!group.machines.some((m) => m.routable)) this.maybeAutostart(group, state.queue[0]!.accept)
    }
  }

  /** Starts one Machine for the group unless one is starting; true when a start is (now) in flight. */
  private maybeAutostart(group: ServiceGroup, accept: Accept | undefined): boolean {
    if (!group.spec.autostart || this.options.controller === undefined || this.closed) return false
    const state = this.state(group)
    if (state.starting !== undefined) return true
    const now = Date.now()
    let nearest: MachineEntry | undefined
    for (const m of group.machines) {
      if (!m.startable || now - m.startFailedAt < 30_000) continue
      if (accept !== undefined && !accept(m)) continue
      if (nearest === undefined || m.rttMs < nearest.rttMs || (m.rttMs === nearest.rttMs && this.random() < 0.5)) nearest = m
    }
    if (nearest === undefined) return false
    const target = nearest
    state.starting = target
    this.options.metrics.app(group.app).autostarts++
    this.options.logger.info('autostart', { app: group.app, machineId: target.machineId, region: target.route.region })
    // A start that never finishes must not block every later one.
    const watchdog = setTimeout(() => {
      if (state.starting === target) {
        state.starting = undefined
        target.startFailedAt = Date.now()
        this.options.logger.warn('autostart timed out', { app: group.app, machineId: target.machineId, timeoutMs: this.options.limits.startTimeoutMs })
      }
    }, this.options.limits.startTimeoutMs)
    watchdog.unref()
    this.options.controller.start(group.app, target.machineId).then(
      () => {
        clearTimeout(watchdog)
        state.starting = undefined
        target.startedLocallyAt = Date.now()
        target.stoppingSince = 0
        this.options.table.touch(group)
      },
      (err: unknown) => {
        clearTimeout(watchdog)
        state.starting = undefined
        target.startFailedAt = Date.now()
        this.options.metrics.app(group.app).upstreamErrors++
        this.options.logger.warn('autostart failed', { app: group.app, machineId: target.machineId, error: err })
        // Try the next Machine for whoever still waits; refuse them if none is left.
        if (state.queue.length > 0 && !this.maybeAutostart(group, state.queue[0]!.accept) && !group.machines.some((m) => m.routable)) {
          for (const waiter of state.queue.splice(0)) {
            waiter.done = true
            clearTimeout(waiter.timer)
            waiter.reject(new RefusedError('no_machines', `starting Machine ${target.machineId} of app ${group.app} failed`))
          }
        }
      },
    )
    return true
  }

  /** Refuses every waiter; idempotent. */
  close(): void {
    if (this.closed) return
    this.closed = true
    for (const [group, state] of this.states) {
      for (const waiter of state.queue.splice(0)) {
        waiter.done = true
        clearTimeout(waiter.timer)
        waiter.reject(new RefusedError('closing', `the proxy is shutting down (app ${group.app})`))
      }
    }
  }
}
