import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createConnection } from 'node:net'
import { join } from 'node:path'
import { runCommand, type RunOptions } from '../core/command.js'
import { InvalidArgumentError, UnavailableError, silentLogger, type Logger } from '../core/index.js'
import { loadOrCreatePrivateKey, wireguardPublicKey } from './wireguard-keys.js'
import {
  DEFAULT_LISTEN_PORT, DEFAULT_PERSISTENT_KEEPALIVE_SECONDS, MESH_PREFIX, normalisePeers, overlayAddressFor, parseWgDump, planPeerChanges,
  wireguardInterfaceName, type AppliedPeer, type MeshPeer, type PeerStatus,
} from './wireguard-plan.js'

// The WireGuard mesh between hosts (DESIGN "Network"), one per host. The kernel here has no
// WireGuard (host-facts §0), so the tunnel is Debian's userspace `wireguard-go`, run in the
// foreground as a child (host-facts §4: `WG_PROCESS_FOREGROUND=1 wireguard-go -f <if>`), and
// configured with `wg set` over its UAPI socket. Its TUN device lives in the network namespace
// wireguard-go was started in; `wg` finds the device by name from any namespace, which is why
// interface names must be unique per host (host-facts §4 gotcha).
//
//   start():  key (0600 file in the data dir) → wireguard-go → listen port + private key →
//             overlay address /128, link up, route fdaa:ffff:0::/48 → ready
//   setPeers: validate → diff against what was applied → one `wg set` + route changes
//   close():  SIGTERM wireguard-go (its TUN device and socket go with it) → link del, files

export interface WireguardMeshOptions {
  hostId: string
  /** The host's data dir: the private key is kept at `<dataDir>/wireguard/private.key`. */
  dataDir: string
  /** UDP port for WireGuard (default 51820; 0 lets wireguard-go pick one). */
  listenPort?: number
  /** Run the device in this named network namespace (/var/run/netns/<name>) instead of the
   * current one: for test kits that build a mesh around hosts from outside. */
  netns?: string
  persistentKeepaliveSeconds?: number
  mtu?: number
  logger?: Logger
  /** How long to wait for wireguard-go's device and socket (default 10 s). */
  startTimeoutMs?: number
}

const UAPI_DIR = '/var/run/wireguard'

export class WireguardMesh {
  readonly hostId: string
  readonly interfaceName: string
  readonly overlayAddress: string
  readonly publicKey: string
  readonly netns: string | undefined
  private port = 0
  private applied = new Map<string, AppliedPeer>()
  private queue: Promise<unknown> = Promise.resolve()
  private closing: Promise<void> | undefined
  private readonly keepalive: number
  private readonly logger: Logger

  private constructor(private readonly options: WireguardMeshOptions, private readonly keyPath: string, private child: ChildProcess) {
    this.hostId = options.hostId
    this.interfaceName = wireguardInterfaceName(options.hostId)
    this.overlayAddress = overlayAddressFor(options.hostId)
    this.publicKey = wireguardPublicKey(readFileSync(keyPath, 'utf8').trim())
    this.netns = options.netns
    this.keepalive = options.persistentKeepaliveSeconds ?? DEFAULT_PERSISTENT_KEEPALIVE_SECONDS
    this.logger = options.logger ?? silentLogger
  }

  /** The UDP port WireGuard listens on. */
  get listenPort(): number { return this.port }

  /** The pid of this host's wireguard-go. */
  get pid(): number | undefined { return this.child.pid }

  static async start(options: WireguardMeshOptions): Promise<WireguardMesh> {
    if (typeof options.hostId !== 'string' || options.hostId === '') throw new InvalidArgumentError('hostId must be a non-empty string')
    const listenPort = options.listenPort ?? DEFAULT_LISTEN_PORT
    if (!Number.isInteger(listenPort) || listenPort < 0 || listenPort > 65535) throw new InvalidArgumentError(`listenPort ${listenPort} is not a UDP port (0–65535)`)
    if (options.netns !== undefined && !existsSync(`/var/run/netns/${options.netns}`)) throw new InvalidArgumentError(`network namespace ${options.netns} does not exist`)
    const keyPath = join(options.dataDir, 'wireguard', 'private.key')
    loadOrCreatePrivateKey(keyPath)
    const name = wireguardInterfaceName(options.hostId)
    await stopStale(options.dataDir, name, options.netns)

    const pidFile = join(options.dataDir, 'wireguard', 'wireguard-go.pid')
    // setpriv --pdeathsig: the device must not outlive the process that manages it (a host that
    // dies uncleanly restarts with a fresh one; stopStale handles a leftover anyway).
    const inNetns = options.netns ? ['nsenter', `--net=/var/run/netns/${options.netns}`, '--'] : []
    const child = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', ...inNetns, 'wireguard-go', '-f', name], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: process.env.HANGAR_WIREGUARD_LOG_LEVEL ?? 'error' },
    })
    let output = ''
    const collect = (chunk: Buffer) => { if (output.length < 8192) output += chunk.toString() }
    child.stdout!.on('data', collect)
    child.stderr!.on('data', collect)
    child.once('error', (err) => { output += `cannot run wireguard-go: ${err.message}` })
    if (child.pid) writeFileSync(pidFile, String(child.pid))
    const mesh = new WireguardMesh(options, keyPath, child)
    try {
      await mesh.waitForDevice(options.startTimeoutMs ?? 10_000, () => output)
      await mesh.wg(['set', name, 'listen-port', String(listenPort), 'private-key', keyPath])
      const dump = parseWgDump((await mesh.wg(['show', name, 'dump'])).stdout)
      mesh.port = dump.listenPort
      if (dump.publicKey !== mesh.publicKey) throw new UnavailableError(`wireguard-go on ${name} reports public key ${dump.publicKey}, expected ${mesh.publicKey}`)
      await mesh.ip(['-batch', '-'], {
        input: [
          `link set ${name} mtu ${options.mtu ?? 1420}`,
          `addr replace ${mesh.overlayAddress}/128 dev ${name} nodad`,
          `link set ${name} up`,
          `route replace ${MESH_PREFIX} dev ${name}`,
        ].join('\n') + '\n',
      })
    } catch (err) {
      await mesh.close()
      throw err
    }
    mesh.logger.info('wireguard mesh up', { interface: name, overlay: mesh.overlayAddress, listenPort: mesh.port, netns: options.netns })
    return mesh
  }

  /** This host as a peer entry for the others. */
  selfPeer(endpoint?: string, allowedIps: string[] = []): MeshPeer {
    return { hostId: this.hostId, publicKey: this.publicKey, ...(endpoint ? { endpoint } : {}), overlayAddress: this.overlayAddress, allowedIps }
  }

  /** Makes the device's peers exactly `peers` (adds, updates, removes) with one `wg set`, and
   * routes each allowed prefix outside the mesh /48 to the interface. Idempotent; calls are
   * applied one after another in call order. */
  setPeers(peers: readonly MeshPeer[]): Promise<{ added: string[]; updated: string[]; removed: string[] }> {
    const run = async () => {
      if (this.closing) throw new UnavailableError(`the WireGuard mesh ${this.interfaceName} is closed`)
      const wanted = normalisePeers(peers, this, this.keepalive)
      const plan = planPeerChanges(this.applied, wanted)
      if (plan.wgArgs.length > 0) await this.wg(['set', this.interfaceName, ...plan.wgArgs])
      const routeLines = [
        ...plan.routesToRemove.map((cidr) => `route del ${cidr} dev ${this.interfaceName}`),
        ...plan.routesToAdd.map((cidr) => `route replace ${cidr} dev ${this.interfaceName}`),
      ]
      // -force: a route already gone (removed with the link, or by hand) must not stop the rest.
      if (routeLines.length > 0) await this.ip(['-force', '-batch', '-'], { input: routeLines.join('\n') + '\n', allowFailure: plan.routesToAdd.length === 0 })
      this.applied = plan.next
      if (plan.added.length + plan.updated.length + plan.removed.length > 0) {
        this.logger.info('wireguard peers changed', { interface: this.interfaceName, added: plan.added, updated: plan.updated, removed: plan.removed })
      }
      return { added: plan.added, updated: plan.updated, removed: plan.removed }
    }
    const result = this.queue.then(run, run)
    this.queue = result.catch(() => undefined)
    return result
  }

  /** The device's live view of its peers (endpoints after roaming, handshakes, bytes). */
  async peers(): Promise<Array<PeerStatus & { hostId?: string }>> {
    const dump = parseWgDump((await this.wg(['show', this.interfaceName, 'dump'])).stdout)
    return dump.peers.map((p) => ({ ...p, ...(this.applied.get(p.publicKey) ? { hostId: this.applied.get(p.publicKey)!.hostId } : {}) }))
  }

  /** Stops wireguard-go (the TUN device, its routes and the UAPI socket go with it). Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const child = this.child
      // Only a device this instance still runs is ours to remove: after a restart took the name
      // over (stopStale), the old instance's close() must not touch the new device.
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
        await exited
        clearTimeout(timer)
        await this.ip(['link', 'del', this.interfaceName], { allowFailure: true })
        rmSync(join(UAPI_DIR, `${this.interfaceName}.sock`), { force: true })
        rmSync(join(this.options.dataDir, 'wireguard', 'wireguard-go.pid'), { force: true })
      } else if (!(await socketAnswers(join(UAPI_DIR, `${this.interfaceName}.sock`)))) {
        // Our wireguard-go was killed (SIGKILL leaves its socket behind); nobody serves the name.
        rmSync(join(UAPI_DIR, `${this.interfaceName}.sock`), { force: true })
      }
      this.logger.info('wireguard mesh down', { interface: this.interfaceName })
    })()
    return this.closing
  }

  private wg(args: string[]) {
    // `wg` reaches the device through /var/run/wireguard/<name>.sock, from any namespace.
    return runCommand('wg', args, { timeoutMs: 10_000 })
  }

  private ip(args: string[], options: RunOptions = {}) {
    return runCommand('ip', this.netns ? ['-n', this.netns, ...args] : args, { timeoutMs: 10_000, ...options })
  }

  private async waitForDevice(timeoutMs: number, output: () => string): Promise<void> {
    const socket = join(UAPI_DIR, `${this.interfaceName}.sock`)
    const deadline = Date.now() + timeoutMs
    for (;;) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new UnavailableError(`wireguard-go for ${this.interfaceName} exited (${this.child.exitCode ?? this.child.signalCode}): ${output().trim() || 'no output'} (is /dev/net/tun available?)`)
      }
      if (existsSync(socket) && (await this.wg(['show', this.interfaceName, 'listen-port']).then(() => true, () => false))) return
      if (Date.now() > deadline) throw new UnavailableError(`wireguard-go did not create ${this.interfaceName} within ${timeoutMs} ms: ${output().trim() || 'no output'}`)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
}

function socketAnswers(path: string): Promise<boolean> {
  if (!existsSync(path)) return Promise.resolve(false)
  return new Promise((resolve) => {
    const socket = createConnection(path)
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/** A wireguard-go left by a host that died without close(): kill it (by its pid file, only if
 * that pid still runs wireguard-go for this interface) and remove its device. */
async function stopStale(dataDir: string, name: string, netns: string | undefined): Promise<void> {
  const pidFile = join(dataDir, 'wireguard', 'wireguard-go.pid')
  mkdirSync(join(dataDir, 'wireguard'), { recursive: true, mode: 0o700 })
  if (existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, 'utf8'))
    let cmdline = ''
    try { cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8') } catch { /* gone */ }
    if (cmdline.includes('wireguard-go') && cmdline.includes(name)) {
      try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
      for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await new Promise((resolve) => setTimeout(resolve, 10))
    }
    rmSync(pidFile, { force: true })
  }
  await runCommand('ip', netns ? ['-n', netns, 'link', 'del', name] : ['link', 'del', name], { allowFailure: true })
}
