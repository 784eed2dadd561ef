import { newUlid, InsufficientCapacityError, InvalidArgumentError, type Logger } from '../core/index.js'
import type { Bus } from '../bus/index.js'
import { rankBestFit, type HostCapacity, type MachineNeed } from './best-fit.js'
import type { HostResources, ReservationLedger } from './ledger.js'

// The market scheduler over NATS (DESIGN "Placement"; reference §10: requests are bids, hosts are
// suppliers). Create → the API asks the hosts of the requested region(s) for offers with a short
// deadline; each host answers only for what it can hold and reserves it for a short TTL; the API
// ranks the offers best-fit, confirms one (the create goes to that host with the reservation),
// and releases the others. No offer: fail fast with insufficient_capacity, nothing queued.

export const PLACEMENT_SUBJECTS = {
  offers: (region: string) => `hangar.placement.${region}.offers`,
  /** Every host listens here too, for `region: "any"`. */
  anyOffers: 'hangar.placement.all.offers',
  release: 'hangar.placement.release',
} as const

export interface OfferRequest {
  requestId: string
  need: MachineNeed
  /** false: a simulation (POST /v1/platform/placements); nothing is held. */
  reserve: boolean
  ttlMs: number
}

export type OfferReply =
  | { ok: true; hostId: string; region: string; capacity: MachineNeed; used: MachineNeed; reservationId?: string; fits: number }
  | { ok: false; hostId: string; region: string; reason: string }

export interface Placement { hostId: string; region: string; reservationId: string }

/** The host's desk: answers offer requests for its region and for "any". */
export function serveOffers(options: { bus: Bus; hostId: string; region: string; ledger: ReservationLedger; resources: () => HostResources; logger?: Logger }): () => void {
  const { bus, hostId, region, ledger } = options
  const answer = (payload: unknown): OfferReply => {
    const request = payload as OfferRequest
    const resources = options.resources()
    const fits = ledger.howMany(resources, request.need)
    if (fits < 1) return { ok: false, hostId, region, reason: `needs ${request.need.cpus} CPU / ${request.need.memoryMb} MB, has ${Math.max(0, resources.capacity.cpus - ledger.effectiveUsed(resources).cpus)} CPU / ${Math.max(0, resources.capacity.memoryMb - ledger.effectiveUsed(resources).memoryMb)} MB free` }
    const used = ledger.effectiveUsed(resources)
    if (!request.reserve) return { ok: true, hostId, region, capacity: resources.capacity, used, fits }
    const reservation = ledger.reserve(resources, request.need, Math.min(Math.max(request.ttlMs, 100), 30_000))!
    return { ok: true, hostId, region, capacity: resources.capacity, used, reservationId: reservation.id, fits }
  }
  const stops = [
    bus.reply(PLACEMENT_SUBJECTS.offers(region), answer),
    bus.reply(PLACEMENT_SUBJECTS.anyOffers, answer),
    bus.subscribe<{ hostId: string; reservationIds: string[] }>(PLACEMENT_SUBJECTS.release, (message) => {
      if (message.hostId === hostId) for (const id of message.reservationIds) ledger.release(id)
    }),
  ]
  return () => { for (const stop of stops) stop() }
}

/** Parses Fly's region expressions: "ams", "ams,sin" (in order of preference), "any". */
export function parseRegions(expression: string | undefined): string[] {
  const regions = (expression ?? '').split(',').map((r) => r.trim()).filter(Boolean)
  for (const region of regions) if (!/^[a-z0-9-]{2,16}$/.test(region)) throw new InvalidArgumentError(`region "${region.slice(0, 40)}" is not a region code`)
  return regions.length ? regions : ['any']
}

export class PlacementMarket {
  constructor(
    private readonly bus: Bus,
    /** Live hosts per region, to know how many answers to wait for. */
    private readonly hostsIn: (region: string) => number,
    private readonly options: { deadlineMs?: number; reservationTtlMs?: number; logger?: Logger } = {},
  ) {}

  private async collect(regions: string[], need: MachineNeed, reserve: boolean): Promise<OfferReply[]> {
    const request: OfferRequest = { requestId: newUlid(), need, reserve, ttlMs: this.options.reservationTtlMs ?? 5_000 }
    const deadline = this.options.deadlineMs ?? 250
    const replies = await Promise.all(regions.map(async (region) => {
      const subject = region === 'any' ? PLACEMENT_SUBJECTS.anyOffers : PLACEMENT_SUBJECTS.offers(region)
      const expected = this.hostsIn(region)
      if (expected === 0) return []
      return this.bus.gather<OfferReply>(subject, request, deadline, expected)
    }))
    // A host can answer on two subjects ("ams" and "any"): keep its first answer, release the second.
    const seen = new Map<string, OfferReply>()
    const duplicates: OfferReply[] = []
    for (const reply of replies.flat()) {
      if (seen.has(reply.hostId)) duplicates.push(reply)
      else seen.set(reply.hostId, reply)
    }
    this.release(duplicates)
    return [...seen.values()]
  }

  /** Picks a host for a new Machine and holds its resources until the create reaches it. */
  async place(regionExpression: string | undefined, need: MachineNeed): Promise<Placement> {
    const regions = parseRegions(regionExpression)
    const replies = await this.collect(regions, need, true)
    const offers = replies.filter((r): r is Extract<OfferReply, { ok: true }> => r.ok && r.reservationId !== undefined)
    // reference §1.3: a region list is in order of preference; best fit within the first region that has room.
    for (const region of regions) {
      const inRegion = region === 'any' ? offers : offers.filter((o) => o.region === region)
      const ranked = rankBestFit(inRegion.map((o): HostCapacity & { offer: typeof o } => ({ hostId: o.hostId, region: o.region, capacity: o.capacity, used: o.used, offer: o })), need)
      const best = ranked[0]
      if (best) {
        this.release(offers.filter((o) => o !== best.offer))
        return { hostId: best.hostId, region: best.region, reservationId: best.offer.reservationId! }
      }
    }
    this.release(offers)
    const refusals = replies.filter((r) => !r.ok).length
    throw new InsufficientCapacityError(`no host in ${regions.join(', ')} can hold a Machine with ${need.cpus} CPU and ${need.memoryMb} MB (${replies.length} host(s) answered${refusals ? `, ${refusals} full` : ''})`)
  }

  /** POST /v1/platform/placements: how many Machines of `need` each region could take now. */
  async simulate(regionExpression: string | undefined, need: MachineNeed, count: number): Promise<Array<{ region: string; count: number; concurrency: number }>> {
    const regions = parseRegions(regionExpression)
    const replies = await this.collect(regions, need, false)
    const byRegion = new Map<string, { fits: number; hosts: number }>()
    for (const reply of replies) {
      if (!reply.ok) continue
      const entry = byRegion.get(reply.region) ?? { fits: 0, hosts: 0 }
      entry.fits += reply.fits
      entry.hosts += 1
      byRegion.set(reply.region, entry)
    }
    let remaining = count
    const result: Array<{ region: string; count: number; concurrency: number }> = []
    for (const [region, { fits, hosts }] of [...byRegion.entries()].sort((a, b) => regions.indexOf(a[0]) - regions.indexOf(b[0]))) {
      if (remaining <= 0) break
      const taken = Math.min(fits, remaining)
      remaining -= taken
      result.push({ region, count: taken, concurrency: hosts })
    }
    return result
  }

  private release(replies: OfferReply[]): void {
    const byHost = new Map<string, string[]>()
    for (const reply of replies) if (reply.ok && reply.reservationId) byHost.set(reply.hostId, [...(byHost.get(reply.hostId) ?? []), reply.reservationId])
    for (const [hostId, reservationIds] of byHost) this.bus.publish(PLACEMENT_SUBJECTS.release, { hostId, reservationIds })
  }
}

