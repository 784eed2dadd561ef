// Closeness (spec/seeds/004_… "Closeness", reference §4.1): "RTTs are measured constantly between
// all servers". Each proxy pings every peer proxy over the backhaul session (HTTP/2 PING) and
// keeps the minimum of the last few samples: a busy peer that answers late says nothing about
// the network, and the minimum is what queueing cannot inflate. Nothing here reads a configured
// delay: the estimate is whatever the pings measured.

/** RTT the balancer uses for a host it has never measured: after every measured host. */
export const UNMEASURED_RTT_MS = 60_000

export class RttEstimator {
  private readonly samples: number[] = []
  private readonly window: number
  private current: number | undefined

  constructor(window = 10) {
    if (!Number.isInteger(window) || window < 1) throw new RangeError(`RTT window must be a positive integer, got ${window}`)
    this.window = window
  }

  /** Adds a sample (ms); returns the estimate after it. Non-finite or negative samples are ignored. */
  add(ms: number): number | undefined {
    if (!Number.isFinite(ms) || ms < 0) return this.current
    this.samples.push(ms)
    if (this.samples.length > this.window) this.samples.shift()
    let min = Infinity
    for (const s of this.samples) if (s < min) min = s
    this.current = min
    return min
  }

  /** The estimate (ms), or undefined before the first sample. */
  get value(): number | undefined {
    return this.current
  }

  get sampleCount(): number {
    return this.samples.length
  }

  /** Forgets the samples (a new session may take another path). */
  reset(): void {
    this.samples.length = 0
    this.current = undefined
  }
}

/** Whether a new estimate differs enough from the one the balancer uses to re-rank Machines:
 * more than 10% or 0.5 ms, whichever is larger (jitter must not reorder hosts on every ping). */
export function rttChanged(previous: number | undefined, next: number | undefined): boolean {
  if (previous === undefined || next === undefined) return previous !== next
  return Math.abs(next - previous) > Math.max(0.5, previous * 0.1)
}
