import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Logger } from '../core/index.js'

// `hangar host` keeps one host's components running (DESIGN "Processes": agent, proxy, catalog,
// DNS, each its own process). A component that dies is restarted with exponential backoff
// (reset after it stays up a while), and the supervisor logs why it died. Each component's
// stdout/stderr go to `<logs>/<name>.log` and its pid to `<dir>/<name>.pid`.

export interface ComponentSpec {
  name: string
  command: string
  args: string[]
  env?: NodeJS.ProcessEnv
  /** A component that must be up before the next one starts. */
  ready?: () => Promise<void>
}

export interface SupervisorOptions {
  dir: string
  logsDir: string
  components: ComponentSpec[]
  logger: Logger
  minBackoffMs?: number
  maxBackoffMs?: number
  /** How long a component must run for its backoff to reset. */
  stableAfterMs?: number
}

interface Running {
  spec: ComponentSpec
  child?: ChildProcess
  restarts: number
  backoffMs: number
  startedAt: number
  timer?: NodeJS.Timeout
}

/** The next backoff: doubling from min to max; reset when the last run was stable. */
export function nextBackoff(previousMs: number, ranForMs: number, options: { minMs: number; maxMs: number; stableAfterMs: number }): number {
  if (ranForMs >= options.stableAfterMs) return options.minMs
  return Math.min(Math.max(previousMs * 2, options.minMs), options.maxMs)
}

export class Supervisor {
  private readonly running = new Map<string, Running>()
  private stopping = false
  private readonly minBackoffMs: number
  private readonly maxBackoffMs: number
  private readonly stableAfterMs: number

  constructor(private readonly options: SupervisorOptions) {
    this.minBackoffMs = options.minBackoffMs ?? 200
    this.maxBackoffMs = options.maxBackoffMs ?? 10_000
    this.stableAfterMs = options.stableAfterMs ?? 30_000
    mkdirSync(options.dir, { recursive: true })
    mkdirSync(options.logsDir, { recursive: true })
  }

  async start(): Promise<void> {
    for (const spec of this.options.components) {
      const entry: Running = { spec, restarts: 0, backoffMs: 0, startedAt: 0 }
      this.running.set(spec.name, entry)
      this.launch(entry)
      if (spec.ready) await spec.ready()
    }
  }

  pid(name: string): number | undefined {
    return this.running.get(name)?.child?.pid
  }

  restarts(name: string): number {
    return this.running.get(name)?.restarts ?? 0
  }

  private launch(entry: Running): void {
    if (this.stopping) return
    const log = openSync(join(this.options.logsDir, `${entry.spec.name}.log`), 'a')
    const child = spawn(entry.spec.command, entry.spec.args, { stdio: ['ignore', log, log], env: entry.spec.env ?? process.env })
    closeSync(log)
    entry.child = child
    entry.startedAt = Date.now()
    if (child.pid) writeFileSync(join(this.options.dir, `${entry.spec.name}.pid`), String(child.pid))
    child.once('error', (err) => this.options.logger.error('cannot start component', { component: entry.spec.name, err }))
    child.once('exit', (code, signal) => {
      entry.child = undefined
      if (this.stopping) return
      const ranForMs = Date.now() - entry.startedAt
      entry.backoffMs = nextBackoff(entry.backoffMs, ranForMs, { minMs: this.minBackoffMs, maxMs: this.maxBackoffMs, stableAfterMs: this.stableAfterMs })
      entry.restarts++
      this.options.logger.warn('component died; restarting', {
        component: entry.spec.name, exitCode: code, signal, ranForMs, restartInMs: entry.backoffMs, restarts: entry.restarts,
        reason: signal ? `killed by ${signal}` : `exited with code ${code}`,
      })
      entry.timer = setTimeout(() => this.launch(entry), entry.backoffMs)
    })
  }

  /** Stops every component (SIGTERM, then SIGKILL after `graceMs`), last started first. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true
    for (const entry of [...this.running.values()].reverse()) {
      if (entry.timer) clearTimeout(entry.timer)
      const child = entry.child
      if (child && child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
        child.kill('SIGTERM')
        const killer = setTimeout(() => child.kill('SIGKILL'), graceMs)
        await exited
        clearTimeout(killer)
      }
      rmSync(join(this.options.dir, `${entry.spec.name}.pid`), { force: true })
    }
  }
}
