import type { Command } from 'commander'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { hostIdFor } from '../../agent/index.js'
import { cleanupHost } from '../../host/index.js'
import { createNetnsStar, defaultMachineSubnet, removeNetnsStar } from '../../network/index.js'
import { pushBusyboxImage, pushHttpServerImage } from '../../images/index.js'
import { createClusterCa } from '../../proxy/index.js'
import { runCommand } from '../../core/command.js'
import { canConnect, freePort } from '../../core/index.js'
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
  hosts: Array<{ id: string; region: string; addr: string; pid: number; catalog_url: string; proxy_addr?: string; data_dir?: string }>
  pids: Record<string, number>
  /** The namespaces of a local cluster (`--hosts N`), removed by `down`. */
  star?: { namespaces: string[]; rootVeth: string }
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

export interface UpOptions {
  dataDir: string
  region: string
  apiPort?: number
  autostopInterval?: string
  /** More than one: a local cluster, each host in its own network namespace (issue 4). */
  hosts?: number
  /** Regions of the hosts, in turn (host i is in regions[i % length]). */
  regions?: string[]
}

export async function up(options: UpOptions): Promise<UpState> {
  const dataDir = resolve(options.dataDir)
  mkdirSync(dataDir, { recursive: true })
  const existing = readUpState(dataDir)
  if (existing && Object.values(existing.pids).every(alive)) return existing
  if (existing) await down(dataDir)
  const regions = options.regions?.length ? options.regions : [options.region]
  for (const region of regions) if (!/^[a-z0-9-]{2,16}$/.test(region)) throw new Error(`region "${region}" is not a region code`)
  const hostCount = options.hosts ?? regions.length
  if (!Number.isInteger(hostCount) || hostCount < 1 || hostCount > 64) throw new Error('--hosts must be 1–64')
  const cluster = hostCount > 1 || regions.length > 1

  const natsDir = join(dataDir, 'nats'); const apiDir = join(dataDir, 'api')
  for (const dir of [natsDir, apiDir]) mkdirSync(dir, { recursive: true })
  const pids: Record<string, number> = {}
  // A local cluster lives in a star of network namespaces; NATS and the registry listen on this
  // machine's address on the star, where every host reaches them.
  const star = cluster ? await createNetnsStar({ hosts: hostCount, prefix: 'hgu' }) : undefined
  const sharedAddress = star ? star.testAddress : '127.0.0.1'
  try {
    const natsPort = await freePort()
    const natsUrl = `nats://${sharedAddress}:${natsPort}`
    pids.nats = startDetached('nats-server', ['-a', sharedAddress, '-p', String(natsPort), '-n', `hangar-${natsPort}`], join(natsDir, 'nats.log'), 'nats-server')
    writeFileSync(join(natsDir, 'nats.pid'), String(pids.nats))
    await waitFor('nats-server', () => canConnect(sharedAddress, natsPort), 10_000, join(natsDir, 'nats.log'))

    // A local registry seeded with two small images built from this machine's busybox, so the
    // first Machine runs without reaching any outside registry.
    const registryDir = join(dataDir, 'registry')
    mkdirSync(join(registryDir, 'storage'), { recursive: true })
    const registryPort = await freePort()
    writeFileSync(join(registryDir, 'config.yml'), [
      'version: 0.1', 'log:', '  level: warn', '  accesslog:', '    disabled: true',
      'storage:', '  filesystem:', `    rootdirectory: ${join(registryDir, 'storage')}`, '  delete:', '    enabled: true',
      'http:', `  addr: ${sharedAddress}:${registryPort}`, `  secret: ${randomBytes(16).toString('hex')}`, '',
    ].join('\n'))
    pids.registry = startDetached('docker-registry', ['serve', join(registryDir, 'config.yml')], join(registryDir, 'registry.log'), 'docker-registry')
    writeFileSync(join(registryDir, 'registry.pid'), String(pids.registry))
    await waitFor('the local registry', () => canConnect(sharedAddress, registryPort), 10_000, join(registryDir, 'registry.log'))
    const registry = { url: `http://${sharedAddress}:${registryPort}`, host: `${sharedAddress}:${registryPort}`, pushAuthorization: async () => undefined }
    await pushHttpServerImage(registry, 'hangar/hello:latest', { body: 'Hello from a Hangar Machine!\n' })
    await pushBusyboxImage(registry, 'hangar/busybox:latest')

    // Hosts: their dirs, ids, addresses (their own loopback address alone; a namespace each in a cluster).
    const catalogApiPort = cluster ? 4002 : await freePort()
    const hosts = []
    for (let i = 0; i < hostCount; i++) {
      const hostDir = cluster ? join(dataDir, 'hosts', `h${i}`) : join(dataDir, 'host')
      mkdirSync(hostDir, { recursive: true })
      const hostId = hostIdFor(hostDir)
      const addr = star ? star.hosts[i]!.address : '127.0.0.1'
      // Alone, the proxy binds apps' public ports on a loopback address of its own, so two `hangar
      // up`s (two --data-dirs) never fight over a port; in a cluster each host has its address.
      const proxyAddr = star ? addr : loopbackAddressFor(hostId)
      hosts.push({ index: i, hostDir, hostId, addr, proxyAddr, region: regions[i % regions.length]!, netns: star?.hosts[i]!.netns })
    }

    const apiPort = await freePort(options.apiPort ?? 4280)
    const tokenFile = join(apiDir, 'token')
    rmSync(join(apiDir, 'api.url'), { force: true })
    const firstCatalog = `http://${hosts[0]!.addr === '127.0.0.1' ? '127.0.0.1' : hosts[0]!.addr}:${catalogApiPort}`
    pids.api = startDetached('api', ['--enable-source-maps', CLI_MAIN, 'api', '--data-dir', apiDir, '--nats', natsUrl, '--port', String(apiPort), '--region', regions[0]!, '--bootstrap-org', ORG, '--token-file', tokenFile, '--catalog', firstCatalog], join(apiDir, 'api.log'))
    await waitFor('the API', () => existsSync(join(apiDir, 'api.url')) && existsSync(tokenFile), 30_000, join(apiDir, 'api.log'))
    const apiUrl = readFileSync(join(apiDir, 'api.url'), 'utf8').trim()
    const token = readFileSync(tokenFile, 'utf8').trim()

    const gossipPort = cluster ? 4001 : await freePort()
    // Every host's proxy must trust the same cluster CA for the backhaul between them; made once
    // here, before the hosts start (they would each make their own otherwise).
    const clusterCa = join(dataDir, 'cluster-ca')
    await createClusterCa(clusterCa)
    for (const host of hosts) {
      const args = ['--enable-source-maps', CLI_MAIN, 'host', '--data-dir', host.hostDir, '--region', host.region, '--nats', natsUrl,
        '--autostop-interval', options.autostopInterval ?? '3m', '--proxy-listen', host.proxyAddr, '--host-address', host.addr,
        '--catalog-port', String(gossipPort), '--catalog-api-port', String(catalogApiPort), '--catalog-api-addr', host.addr,
        '--cluster-ca', clusterCa, '--backhaul-port', String(cluster ? 4003 : await freePort()),
        ...(star ? ['--insecure-registry', registry.host] : ['--machine-subnet', await pickMachineSubnet(host.hostId)]),
        ...(host.index > 0 ? ['--join', `${hosts[0]!.addr}:${gossipPort}`] : [])]
      const key = host.index === 0 ? 'host' : `host-${host.index}`
      pids[key] = host.netns
        ? startDetached(key, [`--net=/var/run/netns/${host.netns}`, '--', process.execPath, ...args], join(host.hostDir, 'host.log'), 'nsenter')
        : startDetached(key, args, join(host.hostDir, 'host.log'))
      writeFileSync(join(host.hostDir, 'host.pid'), String(pids[key]))
    }
    await waitFor(`${hosts.length} host(s)`, async () => {
      try {
        const res = await fetch(`${apiUrl}/v1/platform/regions`, { headers: { authorization: `Bearer ${token}` } })
        const body = await res.json() as { regions?: Array<{ code: string }> }
        return res.ok && regions.every((region) => (body.regions ?? []).some((r) => r.code === region))
      } catch { return false }
    }, 90_000, join(hosts[0]!.hostDir, 'logs', 'agent.log'))

    const state: UpState = {
      api_url: apiUrl, token, org: ORG, region: regions[0]!, proxy_addr: hosts[0]!.proxyAddr, data_dir: dataDir, nats_url: natsUrl, registry: registry.host,
      hosts: hosts.map((h) => ({ id: h.hostId, region: h.region, addr: h.addr, pid: pids[h.index === 0 ? 'host' : `host-${h.index}`]!, catalog_url: `http://${h.addr}:${catalogApiPort}`, proxy_addr: h.proxyAddr, data_dir: h.hostDir })),
      pids,
      ...(star ? { star: { namespaces: star.namespaces, rootVeth: star.rootVeth } } : {}),
    }
    writeFileSync(statePath(dataDir), JSON.stringify(state, null, 2), { mode: 0o600 })
    writeConfig({ api_url: apiUrl, token, org: ORG, region: regions[0]!, data_dir: dataDir })
    return state
  } catch (err) {
    for (const pid of Object.values(pids)) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
    if (star) await star.close()
    throw err
  }
}

export async function down(dataDir: string): Promise<{ stopped: string[]; machinesStopped: number }> {
  const state = readUpState(resolve(dataDir))
  const stopped: string[] = []
  const pids = state?.pids ?? {}
  const order = [...Object.keys(pids).filter((k) => k.startsWith('host')), 'api', 'nats', 'registry']
  for (const name of order) {
    const pid = pids[name]
    if (!alive(pid)) continue
    process.kill(pid!, 'SIGTERM')
    const deadline = Date.now() + 15_000
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    if (alive(pid)) process.kill(pid!, 'SIGKILL')
    stopped.push(name)
  }
  const hostDirs = state?.hosts.map((h) => h.data_dir ?? join(resolve(dataDir), 'host')) ?? [join(resolve(dataDir), 'host')]
  let machinesStopped = 0
  for (const hostDir of hostDirs) {
    // The host's components may outlive a killed supervisor: their pid files say who they are.
    for (const file of ['agent.pid', 'proxy.pid', 'catalog.pid']) {
      const path = join(hostDir, file)
      if (!existsSync(path)) continue
      const pid = Number(readFileSync(path, 'utf8'))
      if (alive(pid)) {
        process.kill(pid, 'SIGKILL')
        stopped.push(file.replace('.pid', ''))
        // Gone, not just signalled: a dying agent still holds its database.
        const deadline = Date.now() + 10_000
        while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
      }
      rmSync(path, { force: true })
    }
    machinesStopped += (await cleanupHost(hostDir)).stopped
  }
  if (state?.star) await removeNetnsStar(state.star)
  rmSync(statePath(resolve(dataDir)), { force: true })
  return { stopped, machinesStopped }
}


export function registerUp(program: Command): void {
  program.command('up')
    .description('set up and start Hangar on this machine: NATS, the Machines API and one host')
    .option('--data-dir <dir>', 'keep everything (state, images, rootfs, logs, pid files) under this directory', defaultDataDir())
    .option('--region <code>', 'region code of the host', 'local')
    .option('--api-port <port>', 'port for the Machines API (default 4280, or a free one)')
    .option('--autostop-interval <duration>', 'how often idle Machines are considered for autostop', '3m')
    .option('--hosts <n>', 'run a local cluster of N hosts, each in its own network namespace')
    .option('--regions <codes>', 'regions of the hosts, comma-separated (host i gets region i mod count)')
    .option('-d, --detach', 'return once everything is ready, leaving it running')
    .option('--json', 'print one JSON object describing what runs (with --detach)')
    .action(async (opts) => {
      const state = await up({
        dataDir: opts.dataDir, region: opts.region, apiPort: opts.apiPort ? Number(opts.apiPort) : undefined, autostopInterval: opts.autostopInterval,
        hosts: opts.hosts ? Number(opts.hosts) : undefined, regions: opts.regions ? String(opts.regions).split(',').map((r: string) => r.trim()).filter(Boolean) : undefined,
      })
      if (opts.json) {
        const { pids: _pids, nats_url: _nats, star: _star, ...shown } = state
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
