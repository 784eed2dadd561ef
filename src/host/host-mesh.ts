import { existsSync, readFileSync } from 'node:fs'
import { Bus, SUBJECTS } from '../bus/index.js'
import { WireguardMesh, type MeshPeer } from '../network/index.js'
import type { HostInfo } from '../agent/index.js'
import type { Logger } from '../core/index.js'

// The host's side of the WireGuard mesh (DESIGN "Network": hosts joined by WireGuard, Debian's
// wireguard-go since the kernel has none). `hangar host` owns the interface, so it outlives agent
// and proxy restarts. Peers are learnt over NATS, the control plane, from the other hosts'
// heartbeats (their public key, endpoint and overlay address): NATS reaches every host before the
// mesh does, which breaks the loop of "gossip rides the mesh, the mesh learns peers by gossip".
// An operator (or the test kit's WAN emulator) can override where a peer is reached with a
// `{hostId: "ip:port"}` file.

export interface HostMeshInfo {
  publicKey: string
  /** Where other hosts send this host's WireGuard datagrams (underlay ip:port). */
  endpoint: string
  overlayAddress: string
}

export interface HostMesh {
  mesh: WireguardMesh
  close(): Promise<void>
}

export async function startHostMesh(options: { hostId: string; dataDir: string; natsUrl: string; listenPort: number; endpointOverridesFile?: string; logger: Logger }): Promise<HostMesh> {
  const mesh = await WireguardMesh.start({ hostId: options.hostId, dataDir: options.dataDir, listenPort: options.listenPort, logger: options.logger })
  const bus = await Bus.connect(options.natsUrl, { name: `mesh-${options.hostId}`, logger: options.logger })
  const peers = new Map<string, MeshPeer>()
  let applying: Promise<unknown> = Promise.resolve()
  let scheduled = false
  const overrides = (): Record<string, string> => {
    if (!options.endpointOverridesFile || !existsSync(options.endpointOverridesFile)) return {}
    try { return JSON.parse(readFileSync(options.endpointOverridesFile, 'utf8')) as Record<string, string> } catch { return {} }
  }
  const apply = () => {
    if (scheduled) return
    scheduled = true
    applying = applying.then(async () => {
      scheduled = false
      const endpoints = overrides()
      const set = [...peers.values()].map((peer) => ({ ...peer, endpoint: endpoints[peer.hostId] ?? peer.endpoint }))
      try {
        const changes = await mesh.setPeers(set)
        if (changes.added.length || changes.removed.length || changes.updated.length) options.logger.info('mesh peers changed', { added: changes.added.length, updated: changes.updated.length, removed: changes.removed.length })
      } catch (err) {
        options.logger.warn('could not apply mesh peers', { err })
      }
    })
  }
  const learn = (info: HostInfo & { mesh?: HostMeshInfo }) => {
    if (!info?.mesh || info.id === options.hostId) return
    const known = peers.get(info.id)
    if (known && known.publicKey === info.mesh.publicKey && known.endpoint === info.mesh.endpoint) return
    peers.set(info.id, { hostId: info.id, publicKey: info.mesh.publicKey, endpoint: info.mesh.endpoint, overlayAddress: info.mesh.overlayAddress })
    apply()
  }
  const stop = bus.subscribe<HostInfo & { mesh?: HostMeshInfo }>(SUBJECTS.hostHeartbeat, learn)
  for (const info of await bus.gather<HostInfo & { mesh?: HostMeshInfo }>(SUBJECTS.hostsDiscover, {}, 300)) learn(info)
  return {
    mesh,
    async close() {
      stop()
      await applying.catch(() => undefined)
      await bus.close()
      await mesh.close()
    },
  }
}
