import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { hostIdFor, type HostInfo } from '../../src/agent/index.js'
import { Bus, SUBJECTS } from '../../src/bus/index.js'
import { ApiClient } from '../../src/cli/api-client.js'
import { runCommand } from '../../src/core/command.js'
import { cleanupHost } from '../../src/host/index.js'
import { WireguardMesh, hostNumber, hostSixpnPrefix, overlayAddressFor, type MeshPeer } from '../../src/network/index.js'
import { createNetnsStar, killNetnsProcesses, netnsExec, type NetnsStar } from './netns-star.js'
import { startHub, type Hub, type NatsNodeInfo } from './netns-hub.js'
import type { DelayTable, WanEmulator } from './wan-emulator.js'

// N Hangar hosts in network namespaces on this machine, for multi-host tests (DESIGN "Hosts in
// tests"; issue 4 "How it is shown"):
//
//   root ns (the test) ──veth── hub ns: br0, WAN relay, NATS ×3 ──veth── host ns h0: `hangar host`, wireguard-go
//      API process on 127.0.0.1          (one helper process,        ──veth── host ns h1: …
//      registry on 127.0.0.1              see netns-hub.ts)           …
//
// - Underlay: one /24 (netns-star.ts). Host bridge ports are isolated, so hosts cannot reach each
//   other directly: host-to-host traffic goes over the WireGuard mesh, whose peer endpoints are
//   the WAN relay's sockets in the hub, so every inter-host datagram gets its region pair's
//   one-way delay (and a partition drops it).
// - NATS: three `nats-server`s in the hub namespace, clustered by routes. Why the hub: NATS is
//   the platform's shared control plane, not part of any host, so killing, restarting or
//   partitioning a host in a test never takes a NATS node with it, and the API in the root
//   namespace reaches it over the kit's veth. Hosts are spread over the nodes (host i → node
//   i mod 3), so a message between hosts crosses NATS routes as in production. NATS traffic is
//   not delayed: it is the control plane; the data plane (catalog, backhaul) rides the mesh.
// - Hosts: `hangar host` under `nsenter --net` (network namespace only). Not `ip netns exec`: it
//   also unshares the mount namespace (MS_SLAVE), which would hide the agent's overlayfs and
//   Machine-netns bind mounts from everyone else, cleanup included.
// - The registry (test/kit/registry.ts) listens on 127.0.0.1 in the root namespace, and image
//   references must stay loopback ones (the registry client speaks plain HTTP only to loopback).
//   So each host namespace DNATs 127.0.0.1:<port> to the test's address on the star, where a TCP
//   forwarder in this process relays to 127.0.0.1:<port> (`exposeLoopbackPort`). The forwarder
//   listens on the kit's own veth address only, reachable from the kit's namespaces alone.
//
// THE SEAM: until `hangar host` runs the mesh itself, this kit builds it around the hosts —
// `WireguardMesh.start` per host namespace and `setPeers` with endpoints from the WAN relay
// (see `meshPeersFor`). The integrator moves `WireguardMesh.start({ hostId, dataDir })` into
// `hangar host` and feeds `setPeers` from the catalog's hosts table; the kit then only has to
// hand each host the relay endpoints (e.g. by an endpoint-override file or flag).

const CLI_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))
const WIREGUARD_PORT = 51820
const CATALOG_GOSSIP_PORT = 4001
/** The catalog API listens on the host's loopback; the kit makes it reachable on the host's
 * underlay address too (see `catalogUrl`). */
const CATALOG_API_PORT = 4002

export interface ClusterOptions {
  /** One region per host, e.g. ['ams', 'sjc', 'fra', 'syd']: the cluster has regions.length hosts. */
  regions: string[]
  /** One-way delays in ms by region pair, 'ams:sjc' (wan-emulator.ts). */
  delays?: DelayTable
  defaultDelayMs?: number
  sameRegionDelayMs?: number
  /** NATS cluster size (default 3). */
  natsNodes?: number
  /** A registry on 127.0.0.1 (test/kit/registry.ts) that hosts must pull from. */
  registry?: { host: string }
  /** More root-namespace loopback TCP ports to make reachable from the hosts as 127.0.0.1:<port>. */
  exposeLoopbackPorts?: number[]
  /** Build the WireGuard mesh around the hosts (default true). Without it hosts cannot reach each
   * other at all (their bridge ports are isolated) and their catalogs are not joined. */
  mesh?: boolean
  /** Who runs the mesh: the kit around the hosts (default), or each `hangar host --mesh` itself,
   * learning peers over NATS, with the WAN relay's endpoints given as its endpoint overrides. */
  meshBy?: 'kit' | 'hosts'
  /** Run a proxy on every host, bound to its underlay address (default true). */
  proxy?: boolean
  /** More `hangar host` flags per host. */
  hostArgs?: (host: ClusterHost) => string[]
  hostEnv?: NodeJS.ProcessEnv
  /** The org created with the API's bootstrap token (default 'personal'). */
  org?: string
  /** How long to wait for every host to register (default 60 s). */
  readyTimeoutMs?: number
}

export interface ClusterHost {
  readonly index: number
  /** 'h0', 'h1', … */
  readonly name: string
  readonly region: string
  readonly hostId: string
  readonly netns: string
  readonly underlayAddress: string
  /** fdaa:ffff:0:<host>::1 — where other hosts reach this one over the mesh. */
  readonly overlayAddress: string
  /** Where the host's proxy binds apps' public ports (its underlay address). */
  readonly proxyAddress: string
  readonly dataDir: string
  /** The host's catalog API as the test reaches it: `hangar host` binds it to the host's
   * 127.0.0.1, and the kit DNATs <underlay>:4002 there. */
  readonly catalogUrl: string
  /** The NATS URL this host was given. */
  readonly natsUrl: string
  readonly logFile: string
  mesh?: WireguardMesh
  /** The `hangar host` supervisor's pid while it runs. */
  pid(): number | undefined
  agentPid(): number | undefined
  /** [command, args] that run a command in this host's network namespace. */
  exec(command: string, args: string[]): [string, string[]]
  /** Stops `hangar host` (SIGTERM: a clean stop; SIGKILL: a crash — its components die too).
   * The host's mesh device stays: it belongs to the machine, not to the process. */
  stop(signal?: NodeJS.Signals): Promise<void>
  /** Starts `hangar host` again with the same data dir and waits until it answers on NATS. */
  start(): Promise<void>
}

/** Round-trip times of ping6 over the mesh. The minimum is the path's delay (the WAN emulator's
 * delay is a floor); the median resists the scheduling spikes of a loaded 2-core machine. */
export interface OverlayRtt { minMs: number; medianMs: number; avgMs: number; maxMs: number; received: number; sent: number }

export interface Cluster {
  readonly dir: string
  readonly star: NetnsStar
  readonly hosts: ClusterHost[]
  readonly nats: NatsNodeInfo[]
  readonly natsUrls: string[]
  readonly hub: Hub
  readonly wan: WanEmulator
  readonly apiUrl: string
  readonly token: string
  readonly org: string
  readonly client: ApiClient
  /** Start-up phases in ms (star, hub, nats, mesh, api, hosts, total). */
  readonly timings: Record<string, number>
  host(nameOrRegion: string): ClusterHost
  /** Raw fetch against the API with the cluster's token (`token: null` sends none). */
  fetch(path: string, init?: RequestInit & { token?: string | null }): Promise<Response>
  /** Drops all of a host's mesh traffic at the WAN relay until heal(). */
  partition(host: ClusterHost): Promise<void>
  heal(host: ClusterHost): Promise<void>
  /** ping6 over the mesh from one host to another's overlay address. */
  overlayRtt(from: ClusterHost, to: ClusterHost, count?: number): Promise<OverlayRtt>
  /** Routes these org networks' Machines between hosts over the mesh: each peer's allowed IPs get
   * its per-network 6PN /80s (the seam: the catalog will tell `hangar host` which networks). */
  routeMachineNetworks(networks: readonly number[]): Promise<void>
  /** Makes 127.0.0.1:<port> of the root namespace reachable from every host as 127.0.0.1:<port>. */
  exposeLoopbackPort(port: number): Promise<void>
  close(): Promise<void>
}

// Best effort on Ctrl-C: every live cluster is torn down before the process exits.
const liveClusters = new Set<() => Promise<void>>()
let sigintInstalled = false
function trackForSigint(close: () => Promise<void>): void {
  liveClusters.add(close)
  if (sigintInstalled) return
  sigintInstalled = true
  process.once('SIGINT', () => {
    void Promise.allSettled([...liveClusters].map((closeCluster) => closeCluster())).finally(() => process.exit(130))
  })
}

/** Thrown by a probe when waiting longer cannot help (a process exited). */
class StopWaiting extends Error {}

/** The last lines of a log, for error messages (the cluster's dir is gone once close() ran). */
function tail(file: string, lines = 15): string {
  let all: string[]
  try { all = readFileSync(file, 'utf8').trimEnd().split('\n') } catch { return '(no log)' }
  // Error lines printed before a long usage text or stack are the ones that explain.
  const errors = all.slice(0, -lines).filter((line) => /error/i.test(line)).slice(-5)
  return [...errors, ...(errors.length > 0 ? ['…'] : []), ...all.slice(-lines)].join('\n')
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, hint: () => string = () => ''): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await probe()
      if (value !== undefined && value !== false) return value
    } catch (err) {
      if (err instanceof StopWaiting) throw new Error(err.message)
      lastError = err
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}${hint()}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill(signal)
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

/** True while the process exists and is not a zombie. */
function isRunning(pid: number): boolean {
  try { return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')) } catch { return false }
}

function readPid(file: string): number | undefined {
  try { return Number(readFileSync(file, 'utf8')) || undefined } catch { return undefined }
}

/** The peer set of `host` in a kit-built mesh: every other host, reached through the WAN relay,
 * with the per-network 6PN /80s of `networks` on that host (what the catalog will provide). */
export function meshPeersFor(host: ClusterHost, hosts: ClusterHost[], wan: WanEmulator, networks: readonly number[] = []): MeshPeer[] {
  return hosts.filter((other) => other !== host && other.mesh).map((other) => other.mesh!.selfPeer(
    wan.endpointFor(host.hostId, other.hostId),
    networks.map((network) => hostSixpnPrefix(network, hostNumber(other.hostId))),
  ))
}

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  if (!Array.isArray(options.regions) || options.regions.length === 0) throw new Error('regions: one region per host, at least one')
  const began = performance.now()
  let lap = began
  const timings: Record<string, number> = {}
  const mark = (phase: string) => { const now = performance.now(); timings[phase] = Math.round(now - lap); lap = now }
  const dir = mkdtempSync(join(tmpdir(), 'hangar-cluster-'))
  const org = options.org ?? 'personal'
  const cleanups: Array<() => Promise<unknown>> = []
  const hostChildren = new Map<number, ChildProcess>()
  const forwarders: Array<{ server: Server; sockets: Set<Socket> }> = []
  let star: NetnsStar | undefined
  let closing: Promise<void> | undefined
  const hosts: ClusterHost[] = []

  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Hosts first, gracefully (the supervisor stops agent and proxy), then anything left in
      // their namespaces, then their Machines, mounts and Machine namespaces.
      let closeLap = performance.now()
      const closeMark = (phase: string) => { const now = performance.now(); timings[`close_${phase}`] = Math.round(now - closeLap); closeLap = now }
      await Promise.allSettled([...hostChildren.values()].map((child) => stopChild(child, 'SIGTERM', 10_000)))
      closeMark('hosts')
      await Promise.allSettled(hosts.map(async (host) => {
        await host.mesh?.close()
        await killNetnsProcesses(host.netns)
        await cleanupHost(host.dataDir)
      }))
      closeMark('machines')
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined)
      closeMark('hub_api')
      for (const forwarder of forwarders) {
        for (const socket of forwarder.sockets) socket.destroy()
        await new Promise<void>((resolve) => forwarder.server.close(() => resolve()))
      }
      await star?.close()
      if (!process.env.HANGAR_KEEP_TEST_DIRS) rmSync(dir, { recursive: true, force: true })
      closeMark('namespaces')
      liveClusters.delete(close)
    })()
    return closing
  }
  // Tracked from the start: a Ctrl-C during start-up tears down what exists so far.
  trackForSigint(close)

  try {
    star = await createNetnsStar({ hosts: options.regions.length, prefix: 'hgc', isolateHosts: true })
    const theStar = star
    mark('star')

    const hub = await startHub({
      netns: theStar.hub.netns, address: theStar.hub.address, logFile: join(dir, 'hub.log'),
      wan: { delays: options.delays ?? {}, defaultDelayMs: options.defaultDelayMs, sameRegionDelayMs: options.sameRegionDelayMs },
    })
    cleanups.push(() => hub.close())
    mark('hub')
    const natsPromise = hub.startNats({ nodes: options.natsNodes ?? 3, dataDir: join(dir, 'nats'), clusterName: `hangar-${theStar.suffix}` })

    // Host records (ids are fixed before anything starts: the mesh needs them).
    for (const [index, region] of options.regions.entries()) {
      const node = theStar.hosts[index]!
      const dataDir = join(dir, 'hosts', `h${index}`)
      const hostId = hostIdFor(dataDir)
      const host: ClusterHost = {
        index, name: `h${index}`, region, hostId, netns: node.netns, underlayAddress: node.address, overlayAddress: overlayAddressFor(hostId),
        proxyAddress: node.address, dataDir, natsUrl: '', catalogUrl: `http://${node.address}:${CATALOG_API_PORT}`, logFile: join(dir, 'hosts', `h${index}.log`),
        pid: () => { const child = hostChildren.get(index); return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined },
        agentPid: () => readPid(join(dataDir, 'agent.pid')),
        exec: (command, args) => netnsExec(node.netns, command, args),
        stop: async (signal = 'SIGTERM') => {
          const child = hostChildren.get(index)
          if (signal === 'SIGKILL') {
            // A crash of the whole host: supervisor, agent, proxy and catalog node at once
            // (Machines and the mesh device survive, as on a real machine whose hangar processes
            // were killed).
            const pids = [child?.pid, ...['agent.pid', 'proxy.pid', 'catalog.pid', 'dns.pid'].map((f) => readPid(join(dataDir, f)))].filter((pid): pid is number => pid !== undefined)
            for (const pid of pids) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
            if (child && child.exitCode === null && child.signalCode === null) await new Promise<void>((resolve) => child.once('exit', () => resolve()))
            await waitFor(`${host.name}'s processes to die`, () => pids.every((pid) => !isRunning(pid)), 10_000)
          } else {
            await stopChild(child, signal, 10_000)
          }
          hostChildren.delete(index)
        },
        start: async () => {
          if (hostChildren.has(index) && host.pid()) throw new Error(`host ${host.name} is running`)
          launchHost(host)
          await waitForHosts([host])
        },
      }
      hosts.push(host)
    }

    const meshByHosts = options.meshBy === 'hosts'
    if (meshByHosts) {
      // Each host runs its own mesh; the kit only tells each where its peers are through the relay.
      await hub.wan.addHosts(hosts.map((h) => ({ hostId: h.hostId, region: h.region, endpoint: `${h.underlayAddress}:${WIREGUARD_PORT}` })))
      for (const host of hosts) {
        mkdirSync(host.dataDir, { recursive: true })
        writeFileSync(join(host.dataDir, 'wg-endpoints.json'), JSON.stringify(Object.fromEntries(hosts.filter((o) => o !== host).map((o) => [o.hostId, hub.wan.endpointFor(host.hostId, o.hostId)]))))
      }
    }
    // ── the mesh, until `hangar host` manages it (see THE SEAM above) ──
    if ((options.mesh ?? true) && !meshByHosts) {
      await Promise.all(hosts.map(async (host) => {
        host.mesh = await WireguardMesh.start({ hostId: host.hostId, dataDir: host.dataDir, netns: host.netns, listenPort: WIREGUARD_PORT })
      }))
      await hub.wan.addHosts(hosts.map((h) => ({ hostId: h.hostId, region: h.region, endpoint: `${h.underlayAddress}:${h.mesh!.listenPort}` })))
      await Promise.all(hosts.map((host) => host.mesh!.setPeers(meshPeersFor(host, hosts, hub.wan))))
      // One handshake per pair, started by one side only: when both sides start one within a
      // round trip, each drops the other's answer and the pair waits out WireGuard's 5 s rekey.
      await Promise.all(hosts.flatMap((a, i) => hosts.slice(i + 1).map(async (b) => {
        await waitFor(`the mesh between ${a.name} and ${b.name}`, async () => {
          const [command, args] = a.exec('ping', ['-6', '-n', '-c', '1', '-W', '2', b.overlayAddress])
          return (await runCommand(command, args, { allowFailure: true, timeoutMs: 5000 })).code === 0
        }, 20_000)
      })))
    }
    mark('mesh')

    const nats = await natsPromise
    mark('nats')

    const exposed = new Set<number>()
    const exposeLoopbackPort = async (port: number) => {
      if (exposed.has(port)) return
      exposed.add(port)
      const sockets = new Set<Socket>()
      const server = createServer((client) => {
        const upstream = createConnection({ host: '127.0.0.1', port })
        for (const socket of [client, upstream]) { sockets.add(socket); socket.once('close', () => sockets.delete(socket)); socket.on('error', () => { client.destroy(); upstream.destroy() }) }
        client.pipe(upstream).pipe(client)
      })
      await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, theStar.testAddress, () => resolve()) })
      forwarders.push({ server, sockets })
      // Inside each host: 127.0.0.1:<port> → the test's address (route_localnet lets a
      // loopback-sourced packet leave; masquerade gives it the host's own source address).
      await Promise.all(hosts.map(async (host) => {
        await theStar.run(host.netns, 'sysctl', ['-qw', 'net.ipv4.conf.all.route_localnet=1'])
        await theStar.run(host.netns, 'nft', ['-f', '-'], `
          table ip hangar_loopback_${port} {
            chain output { type nat hook output priority -100; policy accept; ip daddr 127.0.0.1 tcp dport ${port} dnat to ${theStar.testAddress}:${port}; }
            chain postrouting { type nat hook postrouting priority 100; policy accept; ip saddr 127.0.0.0/8 oifname "eth0" masquerade; }
          }
`)
      }))
    }
    const loopbackPorts = [...(options.exposeLoopbackPorts ?? []), ...(options.registry ? [Number(options.registry.host.split(':').at(-1))] : [])]
    for (const port of loopbackPorts) await exposeLoopbackPort(port)
    // The other way round: the host's own loopback catalog API, reachable on its underlay address.
    await Promise.all(hosts.map(async (host) => {
      await theStar.run(host.netns, 'sysctl', ['-qw', 'net.ipv4.conf.all.route_localnet=1'])
      await theStar.run(host.netns, 'nft', ['-f', '-'], `
        table ip hangar_host_loopback {
          chain prerouting { type nat hook prerouting priority -100; policy accept; iifname "eth0" ip daddr ${host.underlayAddress} tcp dport ${CATALOG_API_PORT} dnat to 127.0.0.1:${CATALOG_API_PORT}; }
        }
`)
    }))

    // The API: its own process in the root namespace, on loopback (port 0: it writes the URL it
    // got to api.url, so no port can be taken by someone else in between).
    const tokenFile = join(dir, 'api', 'token')
    const apiLog = openSync(join(dir, 'api.log'), 'a')
    const api = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', process.execPath, '--enable-source-maps', CLI_MAIN, 'api', '--data-dir', join(dir, 'api'),
      '--nats', nats[0]!.url, '--host', '127.0.0.1', '--port', '0', '--region', options.regions[0]!, '--bootstrap-org', org, '--token-file', tokenFile], {
      stdio: ['ignore', apiLog, apiLog], env: { ...process.env, HANGAR_SKIP_SETUP: '1' },
    })
    closeSync(apiLog)
    cleanups.push(() => stopChild(api, 'SIGTERM', 5000))

    const bus = await Bus.connect(nats.map((n) => n.url), { name: 'cluster-kit' })
    cleanups.push(() => bus.close())

    function launchHost(host: ClusterHost): void {
      const natsUrl = nats[host.index % nats.length]!.url
      ;(host as { natsUrl: string }).natsUrl = natsUrl
      const extra = options.hostArgs?.(host) ?? []
      // Catalog gossip rides the mesh: each host joins the others by overlay address, so SWIM and
      // broadcasts get the WAN's delays. `hangar host` builds its gossip address as
      // `${hostAddress}:${port}`, hence the brackets around the IPv6 overlay address.
      const joinArgs = extra.includes('--join') || extra.includes('--no-catalog') || !(host.mesh || meshByHosts) ? [] : ['--join', hosts.filter((h) => h !== host).map((h) => `[${h.overlayAddress}]:${CATALOG_GOSSIP_PORT}`).join(',')]
      const meshArgs = meshByHosts ? ['--mesh', '--wireguard-port', String(WIREGUARD_PORT), '--mesh-endpoint', `${host.underlayAddress}:${WIREGUARD_PORT}`, '--wireguard-endpoints', join(host.dataDir, 'wg-endpoints.json')] : []
      const args = ['host', '--data-dir', host.dataDir, '--region', host.region, '--nats', natsUrl, '--host-address', `[${host.overlayAddress}]`,
        '--catalog-port', String(CATALOG_GOSSIP_PORT), '--catalog-api-port', String(CATALOG_API_PORT), ...joinArgs, ...meshArgs,
        '--max-restart-backoff', '500ms', ...((options.proxy ?? true) ? ['--proxy-listen', host.proxyAddress] : ['--no-proxy']), ...extra]
      const log = openSync(host.logFile, 'a')
      // pdeathsig: a host never outlives the test process; SIGTERM lets it stop its components.
      const child = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', ...netnsExec(host.netns, process.execPath, ['--enable-source-maps', CLI_MAIN, ...args]).flat()], {
        stdio: ['ignore', log, log], env: { ...process.env, HANGAR_SKIP_SETUP: '1', ...options.hostEnv },
      })
      closeSync(log)
      hostChildren.set(host.index, child)
    }

    async function waitForHosts(wanted: ClusterHost[]): Promise<void> {
      const ids = new Set(wanted.map((h) => h.hostId))
      await waitFor(`hosts ${wanted.map((h) => h.name).join(', ')} to answer on NATS`, async () => {
        for (const host of wanted) {
          const child = hostChildren.get(host.index)
          if (!child || child.exitCode !== null) throw new StopWaiting(`hangar host ${host.name} exited (${child?.exitCode}): ${tail(host.logFile)} ${tail(join(host.dataDir, 'logs', 'agent.log'))}`)
        }
        const infos = await bus.gather<HostInfo>(SUBJECTS.hostsDiscover, {}, 250, ids.size)
        const seen = new Set(infos.map((i) => i.id))
        return [...ids].every((id) => seen.has(id))
      }, options.readyTimeoutMs ?? 60_000, () => ` (logs: ${wanted.map((h) => `${h.name}: ${tail(h.logFile)} agent: ${tail(join(h.dataDir, 'logs', 'agent.log'))}`).join('; ')})`)
    }

    for (const host of hosts) launchHost(host)
    const started = await waitFor('the API to start', () => {
      if (api.exitCode !== null || api.signalCode !== null) throw new StopWaiting(`the API exited (${api.exitCode ?? api.signalCode}): ${tail(join(dir, 'api.log'))}`)
      // api.url is written last; the read may catch it half-written, hence the pattern.
      const url = existsSync(join(dir, 'api', 'api.url')) ? readFileSync(join(dir, 'api', 'api.url'), 'utf8').trim() : ''
      return /^http:\/\/127\.0\.0\.1:\d+$/.test(url) && existsSync(tokenFile) ? { url, token: readFileSync(tokenFile, 'utf8').trim() } : undefined
    }, 60_000, () => ` (log: ${tail(join(dir, 'api.log'))})`)
    const { url: apiUrl, token } = started
    mark('api')
    await waitForHosts(hosts)
    // And the API sees them: every region listed.
    const client = new ApiClient(apiUrl, token)
    const apiFetch = (path: string, init: RequestInit & { token?: string | null } = {}) => {
      const { token: override, ...rest } = init
      const headers = new Headers(rest.headers)
      const bearer = override === undefined ? token : override
      if (bearer !== null) headers.set('authorization', `Bearer ${bearer}`)
      return fetch(`${apiUrl}${path}`, { ...rest, headers })
    }
    const regions = [...new Set(options.regions)]
    await waitFor('the API to list every region', async () => {
      const body = await (await apiFetch('/v1/platform/regions')).json() as { regions: Array<{ code: string }> }
      const listed = new Set(body.regions.map((r) => r.code))
      return regions.every((r) => listed.has(r))
    }, options.readyTimeoutMs ?? 60_000)
    mark('hosts')
    timings.total = Math.round(performance.now() - began)

    return {
      dir, star: theStar, hosts, nats, natsUrls: nats.map((n) => n.url), hub, wan: hub.wan, apiUrl, token, org, client, timings,
      host(nameOrRegion) {
        const found = hosts.find((h) => h.name === nameOrRegion) ?? hosts.find((h) => h.region === nameOrRegion)
        if (!found) throw new Error(`no host or region ${nameOrRegion} in the cluster`)
        return found
      },
      fetch: apiFetch,
      partition: (host) => hub.wan.partition(host.hostId),
      heal: (host) => hub.wan.heal(host.hostId),
      async overlayRtt(from, to, count = 10) {
        const [command, args] = from.exec('ping', ['-6', '-n', '-c', String(count), '-i', '0.2', '-W', '2', to.overlayAddress])
        const result = await runCommand(command, args, { allowFailure: true, timeoutMs: 10_000 + count * 1000 })
        const packets = /(\d+) packets transmitted, (\d+) received/.exec(result.stdout)
        const times = [...result.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])).sort((x, y) => x - y)
        if (!packets || times.length === 0) throw new Error(`ping6 ${from.name} → ${to.name} (${to.overlayAddress}) got no replies: ${result.stdout.trim().split('\n').slice(-2).join(' ')} ${result.stderr.trim()}`)
        return {
          sent: Number(packets[1]), received: Number(packets[2]), minMs: times[0]!, maxMs: times.at(-1)!,
          medianMs: times[Math.floor((times.length - 1) / 2)]!, avgMs: Math.round((times.reduce((a, b) => a + b, 0) / times.length) * 1000) / 1000,
        }
      },
      async routeMachineNetworks(networks) {
        if (!hosts.every((h) => h.mesh)) throw new Error('the cluster was started without a mesh')
        await Promise.all(hosts.map((host) => host.mesh!.setPeers(meshPeersFor(host, hosts, hub.wan, networks))))
      },
      exposeLoopbackPort,
      close,
    }
  } catch (err) {
    await close()
    throw err
  }
}
