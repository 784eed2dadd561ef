// The load-balancing rule, as one pure function (spec/seeds/004_…, reference §4.1):
//
//   bucket 0  load < soft_limit          eligible; the closest such Machine wins
//   bucket 1  soft_limit ≤ load < hard   only when every other Machine is over soft
//   bucket 2  load ≥ hard_limit          never gets new traffic (the caller queues)
//
// Ordering: lower bucket, then closer (lower RTT from this edge), then least loaded, and ties
// broken at random. That gives the seed's walkthrough: 60 concurrent requests to 3 Machines
// next to the edge fill them to soft evenly; the 61st goes to the next closest Machine under
// soft; at 200 every Machine is at soft and the closest take traffic again; at 250 every
// Machine is at hard and the 251st gets no Machine.
//
// Candidates are the data path's live objects (load changes in place), so a pick allocates
// nothing; the scan is linear over an app's Machines, which a service groups per app.

export interface BalancerCandidate {
  readonly machineId: string
  /** Connections or in-flight requests, as the service's concurrency type says. */
  load: number
  softLimit: number
  hardLimit: number
  /** Round-trip time from this edge to the Machine's host, ms. 0 for this host. */
  rttMs: number
}

export const enum LoadBucket { UnderSoft = 0, UnderHard = 1, AtHard = 2 }

export function loadBucket(candidate: BalancerCandidate): LoadBucket {
  if (candidate.load >= candidate.hardLimit) return LoadBucket.AtHard
  if (candidate.load >= candidate.softLimit) return LoadBucket.UnderHard
  return LoadBucket.UnderSoft
}

/** Picks the Machine for the next connection or request, or undefined when every candidate is
 * at its hard limit (or none passes `accept`). `random` returns [0, 1) and breaks ties. */
export function pickCandidate<T extends BalancerCandidate>(
  candidates: readonly T[],
  random: () => number = Math.random,
  accept?: (candidate: T) => boolean,
): T | undefined {
  let best: T | undefined
  let bestBucket = LoadBucket.AtHard
  let ties = 0
  for (let i = 0; i < candidates.length; i++) {
    const candidate = candidates[i]!
    const bucket = loadBucket(candidate)
    if (bucket === LoadBucket.AtHard) continue
    if (accept !== undefined && !accept(candidate)) continue
    if (best === undefined) { best = candidate; bestBucket = bucket; ties = 1; continue }
    const order = bucket - bestBucket || candidate.rttMs - best.rttMs || candidate.load - best.load
    if (order < 0) { best = candidate; bestBucket = bucket; ties = 1 }
    else if (order === 0) {
      // Reservoir sampling: each of the k tied candidates ends up chosen with probability 1/k.
      ties++
      if (random() * ties < 1) best = candidate
    }
  }
  return best
}
