import type { Command } from 'commander'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { join, resolve } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { hostIdFor } from '../../agent/index.js'
import { cleanupHost } from '../../host/index.js'
import { defaultMachineSubnet } from '../../network/index.js'
import { pushBusyboxImage, pushHttpServerImage } from '../../images/index.js'
import { runCommand } from '../../core/command.js'
import { configPath, defaultDataDir, writeConfig } from '../config.js'
import { info, printJson } from '../output.js'

// `hangar up`: the embedded default for one machine (DESIGN "Processes"). Starts a NATS server,
// the API and one host as detached processes under `--data-dir`, makes an org and a token, and
// writes the CLI's config. `--detach` returns once all is ready; without it, it stays in the
// foreground and takes everything down on Ctrl-C. `hangar down` stops all of it.

const CLI_MAIN = fileURLToPath(new URL('../main.js', import.meta.url))
const ORG = 'personal'

export interface UpState {
  api_url: string
  token: string
  org: string
  region: string
  proxy_addr: string
  data_dir: string
  nats_url: string
  /** The local registry `hangar up` runs, seeded with hangar/hello and hangar/busybox. */
  registry: string
  hosts: Array<{ id: string; region: string; addr: string; pid: number; catalog_url: string }>
  pids: Record<string, number>
}

function freePort(preferred?: number): Promise<number> {
  return new Promise((resolvePort) => {
    const server = createServer()
    server.once('error', () => { if (preferred) freePort().then(resolvePort); else resolvePort(0) })
    server.listen(preferred ?? 0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port
      server.close(() => resolvePort(port))
    })
  })
}

/** Whether a process runs. A zombie does not: where PID 1 does not reap (some containers), the
 * detached processes `up` started linger as zombies after they exit. */
export function alive(pid: number | undefined): boolean {
  if (!pid) return false
  try { process.kill(pid, 0) } catch { return false }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

function startDetached(name: string, args: string[], logFile: string, command = process.execPath): number {
  const log = openSync(logFile, 'a')
  const child = spawn(command, args, { detached: true, stdio: ['ignore', log, log], env: { ...process.env, HANGAR_SKIP_SETUP: '1' } })
  closeSync(log)
  child.unref()
  if (!child.pid) throw new Error(`could not start ${name}`)
  return child.pid
}

async function waitFor(what: string, probe: () => Promise<boolean> | boolean, timeoutMs: number, logHint: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`${what} did not become ready within ${timeoutMs / 1000}s (see ${logHint})`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** A subnet for the host's Machines that no route on this machine uses yet. */
async function pickMachineSubnet(hostId: string): Promise<string> {
  const routes = (await runCommand('ip', ['-4', 'route', 'show'], { allowFailure: true })).stdout
  for (let attempt = 0; attempt < 64; attempt++) {
    const candidate = defaultMachineSubnet(attempt === 0 ? hostId : `${hostId}-${attempt}`)
    if (!routes.includes(candidate.replace('.0/20', '.'))) return candidate
  }
  return defaultMachineSubnet(hostId)
}

/** A loopback address (127.0.0.0/8 all reaches this machine) chosen by the host id. */
export function loopbackAddressFor(hostId: string): string {
  const digest = createHash('sha256').update(hostId).digest()
  return `127.${1 + (digest[0]! % 254)}.${digest[1]}.${1 + (digest[2]! % 254)}`
}

export function statePath(dataDir: string): string {
  return join(dataDir, 'up.json')
}

export function readUpState(dataDir: string): UpState | undefined {
  try { return JSON.parse(readFileSync(statePath(dataDir), 'utf8')) as UpState } catch { return undefined }
}

export async function up(options: { dataDir: string; region: string; apiPort?: number; autostopInterval?: string }): Promise<UpState> {
  const dataDir = resolve(options.dataDir)
  mkdirSync(dataDir, { recursive: true })
  const existing = readUpState(dataDir)
  if (existing && Object.values(existing.pids).every(alive)) return existing
  if (existing) await down(dataDir)

  const natsDir = join(dataDir, 'nats'); const apiDir = join(dataDir, 'api'); const hostDir = join(dataDir, 'host')
  for (const dir of [natsDir, apiDir, hostDir]) mkdirSync(dir, { recursive: true })
  const pids: Record<string, number> = {}

  const natsPort = await freePort()
  const natsUrl = `nats://127.0.0.1:${natsPort}`
  pids.nats = startDetached('nats-server', ['-a', '127.0.0.1', '-p', String(natsPort), '-n', `hangar-${natsPort}`], join(natsDir, 'nats.log'), 'nats-server')
  writeFileSync(join(natsDir, 'nats.pid'), String(pids.nats))
  await waitFor('nats-server', () => canConnect(natsPort), 10_000, join(natsDir, 'nats.log'))

  // A local registry seeded with two small images built from this machine's busybox, so the first
  // Machine runs without reaching any outside registry.
  const registryDir = join(dataDir, 'registry')
  mkdirSync(join(registryDir, 'storage'), { recursive: true })
  const registryPort = await freePort()
  writeFileSync(join(registryDir, 'config.yml'), [
    'version: 0.1', 'log:', '  level: warn', '  accesslog:', '    disabled: true',
    'storage:', '  filesystem:', `    rootdirectory: ${join(registryDir, 'storage')}`, '  delete:', '    enabled: true',
    'http:', `  addr: 127.0.0.1:${registryPort}`, `  secret: ${randomBytes(16).toString('hex')}`, '',
  ].join('\n'))
  pids.registry = startDetached('docker-registry', ['serve', join(registryDir, 'config.yml')], join(registryDir, 'registry.log'), 'docker-registry')
  writeFileSync(join(registryDir, 'registry.pid'), String(pids.registry))
  await waitFor('the local registry', () => canConnect(registryPort), 10_000, join(registryDir, 'registry.log'))
  const registry = { url: `http://127.0.0.1:${registryPort}`, host: `127.0.0.1:${registryPort}`, pushAuthorization: async () => undefined }
  await pushHttpServerImage(registry, 'hangar/hello:latest', { body: 'Hello from a Hangar Machine!\n' })
  await pushBusyboxImage(registry, 'hangar/busybox:latest')

  const apiPort = await freePort(options.apiPort ?? 4280)
  const catalogApiPort = await freePort()
  const tokenFile = join(apiDir, 'token')
  rmSync(join(apiDir, 'api.url'), { force: true })
  pids.api = startDetached('api', ['--enable-source-maps', CLI_MAIN, 'api', '--data-dir', apiDir, '--nats', natsUrl, '--port', String(apiPort), '--region', options.region, '--bootstrap-org', ORG, '--token-file', tokenFile, '--catalog', `http://127.0.0.1:${catalogApiPort}`], join(apiDir, 'api.log'))
  await waitFor('the API', () => existsSync(join(apiDir, 'api.url')) && existsSync(tokenFile), 30_000, join(apiDir, 'api.log'))
  const apiUrl = readFileSync(join(apiDir, 'api.url'), 'utf8').trim()
  const token = readFileSync(tokenFile, 'utf8').trim()

  const hostId = hostIdFor(hostDir)
  const subnet = await pickMachineSubnet(hostId)
  // The proxy binds the public ports apps ask for (80, 443, …) on a loopback address of its own,
  // so two `hangar up`s (two --data-dirs) never fight over a port.
  const proxyAddr = loopbackAddressFor(hostId)
  pids.host = startDetached('host', ['--enable-source-maps', CLI_MAIN, 'host', '--data-dir', hostDir, '--region', options.region, '--nats', natsUrl, '--machine-subnet', subnet,
    '--autostop-interval', options.autostopInterval ?? '3m', '--proxy-listen', proxyAddr, '--catalog-port', String(await freePort()), '--catalog-api-port', String(catalogApiPort)], join(hostDir, 'host.log'))
  writeFileSync(join(hostDir, 'host.pid'), String(pids.host))
  await waitFor('the host', async () => {
    try {
      const res = await fetch(`${apiUrl}/v1/platform/regions`, { headers: { authorization: `Bearer ${token}` } })
      const body = await res.json() as { regions?: Array<{ code: string }> }
      return res.ok && (body.regions ?? []).some((r) => r.code === options.region)
    } catch { return false }
  }, 60_000, join(hostDir, 'logs', 'agent.log'))

  const state: UpState = {
    api_url: apiUrl, token, org: ORG, region: options.region, proxy_addr: proxyAddr, data_dir: dataDir, nats_url: natsUrl, registry: registry.host,
    hosts: [{ id: hostId, region: options.region, addr: '127.0.0.1', pid: pids.host, catalog_url: `http://127.0.0.1:${catalogApiPort}` }],
    pids,
  }
  writeFileSync(statePath(dataDir), JSON.stringify(state, null, 2), { mode: 0o600 })
  writeConfig({ api_url: apiUrl, token, org: ORG, region: options.region, data_dir: dataDir })
  return state
}

export async function down(dataDir: string): Promise<{ stopped: string[]; machinesStopped: number }> {
  const state = readUpState(resolve(dataDir))
  const stopped: string[] = []
  const order = ['host', 'api', 'nats', 'registry']
  const pids = state?.pids ?? {}
  for (const name of order) {
    const pid = pids[name]
    if (!alive(pid)) continue
    process.kill(pid!, 'SIGTERM')
    const deadline = Date.now() + 15_000
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    if (alive(pid)) process.kill(pid!, 'SIGKILL')
    stopped.push(name)
  }
  // The host's components may outlive a killed supervisor: their pid files say who they are.
  for (const file of ['agent.pid', 'proxy.pid', 'catalog.pid']) {
    const path = join(resolve(dataDir), 'host', file)
    if (!existsSync(path)) continue
    const pid = Number(readFileSync(path, 'utf8'))
    if (alive(pid)) { process.kill(pid, 'SIGKILL'); stopped.push(file.replace('.pid', '')) }
    rmSync(path, { force: true })
  }
  const { stopped: machinesStopped } = await cleanupHost(join(resolve(dataDir), 'host'))
  rmSync(statePath(resolve(dataDir)), { force: true })
  return { stopped, machinesStopped }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolveConnect) => {
    import('node:net').then(({ createConnection }) => {
      const socket = createConnection({ host: '127.0.0.1', port })
      socket.once('connect', () => { socket.destroy(); resolveConnect(true) })
      socket.once('error', () => resolveConnect(false))
    })
  })
}

export function registerUp(program: Command): void {
  program.command('up')
    .description('set up and start Hangar on this machine: NATS, the Machines API and one host')
    .option('--data-dir <dir>', 'keep everything (state, images, rootfs, logs, pid files) under this directory', defaultDataDir())
    .option('--region <code>', 'region code of the host', 'local')
    .option('--api-port <port>', 'port for the Machines API (default 4280, or a free one)')
    .option('--autostop-interval <duration>', 'how often idle Machines are considered for autostop', '3m')
    .option('-d, --detach', 'return once everything is ready, leaving it running')
    .option('--json', 'print one JSON object describing what runs (with --detach)')
    .action(async (opts) => {
      const state = await up({ dataDir: opts.dataDir, region: opts.region, apiPort: opts.apiPort ? Number(opts.apiPort) : undefined, autostopInterval: opts.autostopInterval })
      if (opts.json) {
        const { pids: _pids, nats_url: _nats, ...shown } = state
        printJson(shown)
      } else {
        info(`Hangar is running.`)
        info(`  Machines API  ${state.api_url}   (org ${state.org}; token and URL saved in ${configPath()})`)
        info(`  Region        ${state.region}`)
        info(`  Proxy         ${state.proxy_addr} (apps' public ports bind here)`)
        info(`  Data          ${state.data_dir}`)
        info(`  Registry      ${state.registry} (hangar/hello, hangar/busybox)`)
        info(`Run a Machine and reach it through the proxy:`)
        info(`  hangar apps create hello && hangar machine run ${state.registry}/hangar/hello -a hello -p 80:8080/tcp:http && curl -H 'Host: hello.hangar.local' http://${state.proxy_addr}/`)
      }
      if (opts.detach) return
      info('Press Ctrl-C to stop Hangar.')
      await new Promise<void>((resolveWait) => {
        // Signal listeners alone do not keep Node running: a timer does, until Ctrl-C.
        const keepAlive = setInterval(() => undefined, 1 << 30)
        const stop = () => { clearInterval(keepAlive); resolveWait() }
        process.once('SIGINT', stop)
        process.once('SIGTERM', stop)
      })
      info('Stopping Hangar…')
      await down(state.data_dir)
    })

  program.command('down')
    .description('stop everything `hangar up` started (Machines are stopped, not destroyed)')
    .option('--data-dir <dir>', 'the data dir given to `hangar up`', defaultDataDir())
    .option('--json', 'print what was stopped as JSON')
    .action(async (opts) => {
      const result = await down(opts.dataDir)
      if (opts.json) printJson(result)
      else info(result.stopped.length ? `Stopped ${result.stopped.join(', ')}${result.machinesStopped ? ` and ${result.machinesStopped} Machine(s)` : ''}.` : 'Nothing was running.')
    })
}
