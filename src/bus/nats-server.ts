import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { UnavailableError, canConnect } from '../core/index.js'

// Starts Debian's `nats-server` (the real one: DESIGN "Processes"). Used by `hangar up` and by the
// test kit; production clusters run their own NATS and pass its URL.

export interface NatsServer {
  url: string
  port: number
  process: ChildProcess
  stop(): Promise<void>
}

export interface NatsServerOptions {
  dataDir: string
  host?: string
  port: number
  /** Cluster: this node's route port and the others' route URLs. */
  cluster?: { name: string; port: number; routes: string[] }
  serverName?: string
  jetstream?: boolean
  logFile?: string
  detached?: boolean
}

export async function startNatsServer(options: NatsServerOptions): Promise<NatsServer> {
  mkdirSync(options.dataDir, { recursive: true })
  const host = options.host ?? '127.0.0.1'
  const args = ['-a', host, '-p', String(options.port), '-n', options.serverName ?? `hangar-${options.port}`]
  if (options.jetstream) args.push('-js', '-sd', join(options.dataDir, 'jetstream'))
  if (options.cluster) args.push('--cluster_name', options.cluster.name, '--cluster', `nats://${host}:${options.cluster.port}`, '--routes', options.cluster.routes.join(','))
  if (options.logFile) args.push('-l', options.logFile)
  const child = spawn('nats-server', args, { stdio: 'ignore', detached: options.detached ?? false })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.once('error', () => undefined)
  const pidFile = join(options.dataDir, 'nats.pid')
  if (child.pid) writeFileSync(pidFile, String(child.pid))
  const deadline = Date.now() + 10_000
  for (;;) {
    if (await canConnect(host, options.port)) break
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new UnavailableError(`nats-server did not start on ${host}:${options.port} (is the port free? is nats-server installed?)`)
    }
    await new Promise((r) => setTimeout(r, 25))
  }
  return {
    url: `nats://${host}:${options.port}`,
    port: options.port,
    process: child,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
        await exited
        clearTimeout(timer)
      }
    },
  }
}
