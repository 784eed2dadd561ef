import { randomBytes } from 'node:crypto'
import type { MachineNeed } from './best-fit.js'

// A host's side of the market (DESIGN "Placement"): it offers only what it can hold, and holds
// what it offered for a short TTL (immediate-or-cancel), so concurrent requests for the same
// capacity never double-book it. Pure: the clock and the host's committed usage are inputs.

export interface Reservation {
  id: string
  need: MachineNeed
  expiresAt: number
}

export interface HostResources {
  capacity: MachineNeed
  /** What the host's Machines already take. */
  used: MachineNeed
}

export class ReservationLedger {
  private readonly reservations = new Map<string, Reservation>()

  constructor(private readonly now: () => number = Date.now) {}

  private sweep(): void {
    const now = this.now()
    for (const [id, reservation] of this.reservations) if (reservation.expiresAt <= now) this.reservations.delete(id)
  }

  /** What live reservations hold. */
  reserved(): MachineNeed {
    this.sweep()
    let cpus = 0; let memoryMb = 0
    for (const { need } of this.reservations.values()) { cpus += need.cpus; memoryMb += need.memoryMb }
    return { cpus, memoryMb }
  }

  /** Committed usage plus reservations: what an offer must fit beside. */
  effectiveUsed(resources: HostResources): MachineNeed {
    const reserved = this.reserved()
    return { cpus: resources.used.cpus + reserved.cpus, memoryMb: resources.used.memoryMb + reserved.memoryMb }
  }

  fits(resources: HostResources, need: MachineNeed): boolean {
    const used = this.effectiveUsed(resources)
    return used.cpus + need.cpus <= resources.capacity.cpus && used.memoryMb + need.memoryMb <= resources.capacity.memoryMb
  }

  /** How many Machines of `need` fit now (for placement simulations). */
  howMany(resources: HostResources, need: MachineNeed): number {
    const used = this.effectiveUsed(resources)
    const byCpu = need.cpus > 0 ? Math.floor((resources.capacity.cpus - used.cpus) / need.cpus) : Infinity
    const byMemory = need.memoryMb > 0 ? Math.floor((resources.capacity.memoryMb - used.memoryMb) / need.memoryMb) : Infinity
    return Math.max(0, Math.min(byCpu, byMemory))
  }

  /** Reserves `need` for `ttlMs` if it fits; undefined when it does not. */
  reserve(resources: HostResources, need: MachineNeed, ttlMs: number): Reservation | undefined {
    if (!this.fits(resources, need)) return undefined
    const reservation: Reservation = { id: randomBytes(8).toString('hex'), need, expiresAt: this.now() + ttlMs }
    this.reservations.set(reservation.id, reservation)
    return reservation
  }

  /** Keeps a confirmed reservation alive while the Machine is being made (its usage counts once
   * the Machine is recorded; the reservation is released then). False if it lapsed. */
  extend(id: string, ttlMs: number): boolean {
    this.sweep()
    const reservation = this.reservations.get(id)
    if (!reservation) return false
    reservation.expiresAt = this.now() + ttlMs
    return true
  }

  release(id: string): void {
    this.reservations.delete(id)
  }

  size(): number {
    this.sweep()
    return this.reservations.size
  }
}
