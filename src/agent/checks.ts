import { connect } from 'node:net'
import { request } from 'node:http'
import { parseDurationMs, type CheckStatus, type MachineCheck, type MachineConfig, type MachineServiceCheck } from '../core/index.js'

// Health checks of running Machines (reference §2: service checks decide routing, top-level
// checks are informational; a failing check never restarts a Machine). The agent runs them from
// the host against the Machine's private address and publishes the results with the Machine.

export interface CheckDefinition {
  name: string
  type: 'tcp' | 'http'
  port: number
  intervalMs: number
  timeoutMs: number
  gracePeriodMs: number
  method: string
  path: string
  headers: Record<string, string>
  /** Service checks gate routing; top-level ones do not. */
  service: boolean
}

const pad = (n: number) => String(n).padStart(2, '0')

/** Every check a Machine config defines, named as Fly names them (`servicecheck-00-http-8080`). */
export function checkDefinitions(config: MachineConfig): CheckDefinition[] {
  const definitions: CheckDefinition[] = []
  let index = 0
  for (const service of config.services ?? []) {
    for (const check of service.checks ?? []) {
      const type = check.type ?? 'tcp'
      const port = check.port ?? service.internal_port ?? 0
      definitions.push(toDefinition(`servicecheck-${pad(index++)}-${type}-${port}`, check, port, true))
    }
  }
  for (const [name, check] of Object.entries(config.checks ?? {})) {
    definitions.push(toDefinition(name, check, check.port ?? 0, false))
  }
  return definitions
}

function toDefinition(name: string, check: MachineServiceCheck | MachineCheck, port: number, service: boolean): CheckDefinition {
  const headers: Record<string, string> = {}
  for (const header of check.headers ?? []) headers[header.name] = header.values.join(', ')
  return {
    name, port, service,
    type: check.type === 'http' ? 'http' : 'tcp',
    intervalMs: check.interval ? parseDurationMs(check.interval, `check ${name} interval`) : 15_000,
    timeoutMs: check.timeout ? parseDurationMs(check.timeout, `check ${name} timeout`) : 2_000,
    gracePeriodMs: check.grace_period ? parseDurationMs(check.grace_period, `check ${name} grace_period`) : 0,
    method: check.method ?? 'GET',
    path: check.path ?? '/',
    headers,
  }
}

export async function runCheck(definition: CheckDefinition, address: string): Promise<{ passing: boolean; output: string }> {
  if (definition.type === 'tcp') {
    return new Promise((resolve) => {
      const socket = connect({ host: address, port: definition.port })
      const timer = setTimeout(() => { socket.destroy(); resolve({ passing: false, output: `timed out connecting to ${address}:${definition.port} after ${definition.timeoutMs}ms` }) }, definition.timeoutMs)
      socket.once('connect', () => { clearTimeout(timer); socket.destroy(); resolve({ passing: true, output: 'Success' }) })
      socket.once('error', (err) => { clearTimeout(timer); resolve({ passing: false, output: `connect ${address}:${definition.port}: ${err.message}` }) })
    })
  }
  return new Promise((resolve) => {
    const req = request({ host: address, port: definition.port, method: definition.method, path: definition.path, headers: definition.headers, timeout: definition.timeoutMs }, (res) => {
      res.resume()
      const status = res.statusCode ?? 0
      resolve({ passing: status >= 200 && status < 400, output: `[${status}] ${res.statusMessage ?? ''}`.trim() })
    })
    req.on('timeout', () => { req.destroy(); resolve({ passing: false, output: `timed out after ${definition.timeoutMs}ms` }) })
    req.on('error', (err) => resolve({ passing: false, output: err.message }))
    req.end()
  })
}

/** Runs one Machine's checks on their intervals until stopped. */
export class MachineChecks {
  private readonly statuses = new Map<string, CheckStatus>()
  private readonly timers = new Set<NodeJS.Timeout>()
  private stopped = false

  constructor(private readonly definitions: CheckDefinition[], private readonly address: string, private readonly onChange: () => void) {
    const now = new Date().toISOString()
    for (const definition of definitions) this.statuses.set(definition.name, { name: definition.name, status: 'warning', output: 'waiting for the first check', updated_at: now })
    for (const definition of definitions) this.schedule(definition, definition.gracePeriodMs)
  }

  private schedule(definition: CheckDefinition, delayMs: number): void {
    if (this.stopped) return
    const timer = setTimeout(async () => {
      this.timers.delete(timer)
      const result = await runCheck(definition, this.address)
      if (this.stopped) return
      const status: CheckStatus['status'] = result.passing ? 'passing' : 'critical'
      const previous = this.statuses.get(definition.name)
      this.statuses.set(definition.name, { name: definition.name, status, output: result.output, updated_at: new Date().toISOString() })
      if (previous?.status !== status) this.onChange()
      this.schedule(definition, definition.intervalMs)
    }, delayMs)
    timer.unref()
    this.timers.add(timer)
  }

  list(): CheckStatus[] {
    return [...this.statuses.values()]
  }

  /** Service checks only: these decide whether the proxy routes to the Machine. */
  serviceChecks(): CheckStatus[] {
    return this.definitions.filter((d) => d.service).map((d) => this.statuses.get(d.name)!)
  }

  stop(): void {
    this.stopped = true
    for (const timer of this.timers) clearTimeout(timer)
    this.timers.clear()
  }
}
