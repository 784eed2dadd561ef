import { shuffle, type Random } from './seeded-random.js'

// Who gets a change, and in what order (reference §5.4, corrosion members.rs and broadcast/mod.rs):
// - peers are bucketed into RTT rings [0,6) [6,15) [15,50) [50,100) [100,200) [200,300) ms, with
//   2 ms of hysteresis so a peer hovering at a boundary does not flap between rings;
// - a local change goes first to every ring-0 peer (nearest first), then to
//   max(indirect probes, (members − ring0) / (max_transmissions · 10)) random others;
// - far peers that receive it pass it on (fewer hops left each time), near peers do not: their
//   own neighbourhood was covered by whoever sent it to them;
// - the origin re-sends to fresh random peers a bounded number of times (UDP drops datagrams);
//   anything still missed is fetched by anti-entropy sync.

export const RING_UPPER_BOUNDS_MS = [6, 15, 50, 100, 200, 300] as const
export const RING_HYSTERESIS_MS = 2
/** Ring of a peer whose RTT is unknown or beyond the last bucket. */
export const FAR_RING = RING_UPPER_BOUNDS_MS.length

export interface BroadcastPeer {
  id: string
  addr: string
  rttMs: number | null
  /** The ring the peer was in last time, for hysteresis. */
  ring?: number
}

export interface BroadcastTarget {
  addr: string
  id: string
  /** How many more times receivers may pass it on. */
  hopsLeft: number
}

export interface BroadcastConfig {
  /** Origin sends plus re-sends (Corrosion's max_transmissions). */
  maxTransmissions: number
  /** Minimum random far peers per send (Corrosion uses num_indirect_probes). */
  minRandomPeers: number
  /** Hops a far peer may still pass the change on. */
  maxHops: number
  /** Cap on ring-0 peers per send, for very large single-site clusters. */
  maxRing0Peers: number
}

export const DEFAULT_BROADCAST_CONFIG: BroadcastConfig = {
  maxTransmissions: 3,
  minRandomPeers: 3,
  maxHops: 2,
  maxRing0Peers: 64,
}

export function rttRing(rttMs: number | null, previousRing?: number): number {
  if (rttMs === null || !Number.isFinite(rttMs)) return FAR_RING
  let ring = RING_UPPER_BOUNDS_MS.findIndex((bound) => rttMs < bound)
  if (ring < 0) ring = FAR_RING
  if (previousRing !== undefined && previousRing !== ring && previousRing < FAR_RING) {
    // Stay in the previous ring while within the hysteresis band around its bounds.
    const lower = previousRing === 0 ? 0 : RING_UPPER_BOUNDS_MS[previousRing - 1]!
    const upper = RING_UPPER_BOUNDS_MS[previousRing]!
    if (rttMs >= lower - RING_HYSTERESIS_MS && rttMs < upper + RING_HYSTERESIS_MS) return previousRing
  }
  return ring
}

function randomCount(config: BroadcastConfig, members: number, ring0: number): number {
  return Math.max(config.minRandomPeers, Math.ceil((members - ring0) / (config.maxTransmissions * 10)))
}

/** First send of a local change: ring 0 nearest first, then random far peers. */
export function planOriginBroadcast(peers: readonly BroadcastPeer[], config: BroadcastConfig, random: Random): BroadcastTarget[] {
  const ring0 = peers.filter((p) => rttRing(p.rttMs, p.ring) === 0).sort((a, b) => (a.rttMs ?? 0) - (b.rttMs ?? 0)).slice(0, config.maxRing0Peers)
  const near = new Set(ring0.map((p) => p.id))
  const others = shuffle(random, peers.filter((p) => !near.has(p.id)))
  const far = others.slice(0, randomCount(config, peers.length, ring0.length))
  return [
    ...ring0.map((p) => ({ addr: p.addr, id: p.id, hopsLeft: 0 })),
    ...far.map((p) => ({ addr: p.addr, id: p.id, hopsLeft: config.maxHops })),
  ]
}

/** A re-send by the origin: random peers not sent to before, each allowed one more hop. */
export function planResend(peers: readonly BroadcastPeer[], alreadySent: ReadonlySet<string>, config: BroadcastConfig, random: Random): BroadcastTarget[] {
  const fresh = shuffle(random, peers.filter((p) => !alreadySent.has(p.id)))
  return fresh.slice(0, randomCount(config, peers.length, 0)).map((p) => ({ addr: p.addr, id: p.id, hopsLeft: 1 }))
}

/** A receiver passing on a change it got with hops left: its own ring 0, then a few random
 * peers with one hop fewer. Never back to where it came from. */
export function planRelay(peers: readonly BroadcastPeer[], hopsLeft: number, exclude: ReadonlySet<string>, config: BroadcastConfig, random: Random): BroadcastTarget[] {
  if (hopsLeft <= 0) return []
  const candidates = peers.filter((p) => !exclude.has(p.id))
  const ring0 = candidates.filter((p) => rttRing(p.rttMs, p.ring) === 0).sort((a, b) => (a.rttMs ?? 0) - (b.rttMs ?? 0)).slice(0, config.maxRing0Peers)
  const near = new Set(ring0.map((p) => p.id))
  const far = shuffle(random, candidates.filter((p) => !near.has(p.id))).slice(0, config.minRandomPeers)
  return [
    ...ring0.map((p) => ({ addr: p.addr, id: p.id, hopsLeft: 0 })),
    ...far.map((p) => ({ addr: p.addr, id: p.id, hopsLeft: hopsLeft - 1 })),
  ]
}
