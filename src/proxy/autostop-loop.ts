import { parseDurationMs, normaliseSignal, type Logger, type MachineController } from '../core/index.js'
import { decideAutostop } from './autostop.js'
import type { ProxyMetrics } from './metrics.js'
import type { RoutingTable } from './routing-table.js'

// The autostop loop (reference §4.2): every interval, per service with autostop on, decide with
// decideAutostop over every Machine of the service, and act on the ones this host runs (each
// host's proxy computes the same decision, so each Machine is stopped by its own host once).
// The stop uses the Machine's stop_config signal and timeout (fly.toml kill_signal/kill_timeout).

export const DEFAULT_AUTOSTOP_INTERVAL_MS = 3 * 60_000

export interface AutostopLoopOptions {
  table: RoutingTable
  controller: MachineController
  metrics: ProxyMetrics
  logger: Logger
  hostId: string
  intervalMs: number
}

export class AutostopLoop {
  private readonly options: AutostopLoopOptions
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | undefined
  private closed = false

  constructor(options: AutostopLoopOptions) {
    this.options = options
    this.schedule()
  }

  private schedule(): void {
    if (this.closed) return
    this.timer = setTimeout(() => {
      this.running = this.pass().finally(() => { this.running = undefined; this.schedule() })
    }, this.options.intervalMs)
    this.timer.unref()
  }

  /** One pass; exported for the CLI's `--autostop-interval` and for tests. */
  async pass(): Promise<void> {
    const { table, controller, metrics, logger, hostId } = this.options
    const work: Array<Promise<void>> = []
    for (const app of table.apps.values()) {
      for (const group of app.groups.values()) {
        if (group.spec.autostop === 'off') continue
        const actions = decideAutostop({
          autostop: group.spec.autostop,
          minMachinesRunning: group.spec.minMachinesRunning,
          primaryRegion: group.primaryRegion,
          machines: group.machines.map((m) => ({
            machineId: m.machineId,
            region: m.route.region,
            running: m.state === 'started' && m.stoppingSince === 0,
            load: m.load,
            softLimit: m.softLimit,
            lastActiveAt: m.lastActiveAt,
          })),
        })
        for (const action of actions) {
          const entry = group.machines.find((m) => m.machineId === action.machineId)
          if (entry === undefined || entry.route.hostId !== hostId) continue
          // No new traffic to a Machine being stopped, before the RouteSource says so.
          for (const sibling of table.findMachine(entry.machineId)) sibling.stoppingSince = Date.now()
          table.touch(group)
          metrics.app(group.app).autostops++
          const stopConfig = entry.route.stopConfig
          let signal: string | undefined
          let timeoutMs: number | undefined
          try {
            signal = stopConfig.signal !== undefined ? normaliseSignal(stopConfig.signal, 'stop_config.signal') : undefined
            timeoutMs = stopConfig.timeout !== undefined ? parseDurationMs(stopConfig.timeout, 'stop_config.timeout') : undefined
          } catch (err) {
            logger.warn('ignoring an invalid stop_config', { app: group.app, machineId: entry.machineId, error: err })
          }
          logger.info('autostop', { app: group.app, machineId: entry.machineId, region: action.region, action: action.action })
          const done = action.action === 'suspend'
            ? controller.suspend(group.app, entry.machineId)
            : controller.stop(group.app, entry.machineId, { ...(signal ? { signal } : {}), ...(timeoutMs !== undefined ? { timeoutMs } : {}) })
          work.push(done.catch((err: unknown) => {
            for (const sibling of table.findMachine(entry.machineId)) sibling.stoppingSince = 0
            table.touch(group)
            logger.warn('autostop failed', { app: group.app, machineId: entry.machineId, error: err })
          }))
        }
      }
    }
    await Promise.all(work)
  }

  async close(): Promise<void> {
    this.closed = true
    clearTimeout(this.timer)
    await this.running
  }
}
