import { readFileSync, watch, type FSWatcher } from 'node:fs'
import { InvalidArgumentError, silentLogger, splitHostPort, type Logger } from '../core/index.js'

// The other proxies of the cluster, as the backhaul needs them: host id, region and the address
// of their backhaul listener. In a cluster they come from the catalog's hosts table (written by
// each host's agent: `proxy_addr`); a standalone proxy reads them from a JSON file.

export interface BackhaulPeer {
  hostId: string
  region: string
  /** `host:port` (IPv6 in brackets) of the peer's backhaul listener. */
  addr: string
}

export interface PeerSource {
  /** Calls `apply` with the full peer list now and whenever it changes. Returns an unsubscribe. */
  subscribe(apply: (peers: BackhaulPeer[]) => void): () => void
}

export { splitHostPort, joinHostPort } from '../core/index.js'

/** Validates a peer list: `[{hostId, region, addr}]` or `{peers: [...]}`. */
export function parsePeers(value: unknown, what = 'peers'): BackhaulPeer[] {
  const list = Array.isArray(value) ? value : (value as { peers?: unknown } | null)?.peers
  if (!Array.isArray(list)) throw new InvalidArgumentError(`${what}: expected [{"hostId", "region", "addr"}, ...] or {"peers": [...]}`)
  return list.map((item, i) => {
    const peer = item as Partial<BackhaulPeer> | null
    if (peer === null || typeof peer !== 'object' || typeof peer.hostId !== 'string' || peer.hostId === '' || typeof peer.addr !== 'string') {
      throw new InvalidArgumentError(`${what}[${i}]: needs a hostId and an addr (host:port)`)
    }
    splitHostPort(peer.addr, `${what}[${i}].addr`)
    return { hostId: peer.hostId, region: typeof peer.region === 'string' ? peer.region : '', addr: peer.addr }
  })
}

export class StaticPeerSource implements PeerSource {
  private peers: BackhaulPeer[]
  private readonly subscribers = new Set<(peers: BackhaulPeer[]) => void>()

  constructor(peers: BackhaulPeer[]) {
    this.peers = parsePeers(peers)
  }

  subscribe(apply: (peers: BackhaulPeer[]) => void): () => void {
    this.subscribers.add(apply)
    apply(this.peers)
    return () => { this.subscribers.delete(apply) }
  }

  set(peers: BackhaulPeer[]): void {
    this.peers = parsePeers(peers)
    for (const apply of this.subscribers) apply(this.peers)
  }
}

/** Peers from a JSON file, re-read whenever it changes (`hangar proxy --peers-file`). */
export class FilePeerSource implements PeerSource {
  private readonly path: string
  private readonly logger: Logger
  private readonly watchers = new Set<FSWatcher>()

  constructor(path: string, logger: Logger = silentLogger) {
    this.path = path
    this.logger = logger
    this.read() // fail fast on a bad file
  }

  private read(): BackhaulPeer[] {
    let parsed: unknown
    try {
      parsed = JSON.parse(readFileSync(this.path, 'utf8'))
    } catch (err) {
      throw new InvalidArgumentError(`--peers-file ${this.path}: ${err instanceof Error ? err.message : String(err)}`)
    }
    return parsePeers(parsed, `--peers-file ${this.path}`)
  }

  subscribe(apply: (peers: BackhaulPeer[]) => void): () => void {
    apply(this.read())
    const watcher = watch(this.path, () => {
      try { apply(this.read()) } catch (err) { this.logger.warn('ignoring an unreadable peers file', { path: this.path, error: err }) }
    })
    this.watchers.add(watcher)
    return () => { watcher.close(); this.watchers.delete(watcher) }
  }
}
