// Load across the cluster (DESIGN "Who owns what": live load per Machine is owned by the worker
// proxy of its host and replicated to edge proxies by load reports). Pure bookkeeping, no sockets:
//
//   worker (the Machine's host)                      edge (any other proxy)
//   load = every connection/request on the Machine   load = own in-flight + othersLoad
//   originLoad[edge] = the part that edge sent        othersLoad = worker's load − this edge's part
//
// A worker reports to each edge the load *other* proxies put on its Machines (its total minus what
// that edge sent), every ~100 ms and piggybacked on each backhaul answer. The edge adds its own
// in-flight count, which it knows exactly and at once, so nothing is counted twice and its picks
// honour soft and hard limits cluster-wide (spec/seeds/004_…, reference §4.1). Where the view is
// stale the worker's hard-limit check is the backstop: a refusal says how loaded the Machine is
// and the edge takes it as at its hard limit until the next report.

export interface LoadedMachine {
  /** `<machineId>/<protocol>/<internal port>`: the same on every proxy. */
  readonly key: string
  /** Everything the balancer counts: own in-flight plus othersLoad. */
  load: number
  /** Edge side: load other proxies put on this (remote) Machine, from its worker's reports. */
  othersLoad: number
  hardLimit: number
  /** Worker side: backhaul streams in flight on this (local) Machine, per origin host. */
  originLoad: Map<string, number> | undefined
  readonly route: { readonly hostId: string }
}

/** One report line: Machines with load from proxies other than the receiver, `[key, load]`. */
export type LoadReport = Array<[string, number]>

// ── worker side ──

/** A backhaul stream from `origin` started (+1) or ended (−1) on `machine`. */
export function countOrigin(machine: LoadedMachine, origin: string, delta: 1 | -1): void {
  let byOrigin = machine.originLoad
  if (byOrigin === undefined) { byOrigin = new Map(); machine.originLoad = byOrigin }
  const next = (byOrigin.get(origin) ?? 0) + delta
  if (next > 0) byOrigin.set(origin, next)
  else byOrigin.delete(origin)
}

/** The load on a local Machine that did not come from `origin`. */
export function loadExcluding(machine: LoadedMachine, origin: string): number {
  const own = machine.originLoad?.get(origin) ?? 0
  return Math.max(0, machine.load - machine.othersLoad - own)
}

/** What `origin` needs to know: each local Machine's load from everyone but `origin`, when > 0. */
export function buildLoadReport(localMachines: Iterable<LoadedMachine>, origin: string): LoadReport {
  const report: LoadReport = []
  for (const machine of localMachines) {
    const others = loadExcluding(machine, origin)
    if (others > 0) report.push([machine.key, others])
  }
  report.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  return report
}

export function encodeLoadReport(report: LoadReport): string {
  return JSON.stringify({ l: report }) + '\n'
}

/** Parses one report line; anything malformed is an error (the caller drops the line). */
export function decodeLoadReport(line: string): LoadReport {
  const parsed = JSON.parse(line) as { l?: unknown }
  if (parsed === null || typeof parsed !== 'object' || !Array.isArray(parsed.l)) throw new Error('a load report is {"l": [[key, load], ...]}')
  const report: LoadReport = []
  for (const pair of parsed.l) {
    if (!Array.isArray(pair) || typeof pair[0] !== 'string' || !Number.isInteger(pair[1]) || (pair[1] as number) < 0) throw new Error(`bad load report entry ${JSON.stringify(pair)}`)
    report.push([pair[0], pair[1] as number])
  }
  return report
}

// ── edge side ──

export interface RemoteLoadHooks<M extends LoadedMachine> {
  /** This proxy's entry for a Machine key, if it routes to it. */
  entry(key: string): M | undefined
  /** Load on `machine` went down: waiters queued for its service may go now. */
  wake(machine: M): void
}

/** The edge's view of what other proxies put on remote Machines. */
export class RemoteLoads<M extends LoadedMachine> {
  /** worker host → keys whose othersLoad came from it and may be non-zero. */
  private readonly reported = new Map<string, Set<string>>()
  private readonly hooks: RemoteLoadHooks<M>

  constructor(hooks: RemoteLoadHooks<M>) {
    this.hooks = hooks
  }

  /** A full report from `worker`: Machines it does not list carry no load from others. */
  applyReport(worker: string, report: LoadReport): void {
    const previous = this.reported.get(worker)
    const next = new Set<string>()
    for (const [key, load] of report) {
      const machine = this.hooks.entry(key)
      if (machine === undefined || machine.route.hostId !== worker) continue
      next.add(key)
      this.setOthers(machine, load)
    }
    if (previous !== undefined) {
      for (const key of previous) {
        if (next.has(key)) continue
        const machine = this.hooks.entry(key)
        if (machine !== undefined) this.setOthers(machine, 0)
      }
    }
    if (next.size > 0) this.reported.set(worker, next)
    else this.reported.delete(worker)
  }

  /** The load a worker put on one answer (accepting a stream of ours). */
  applyPiggyback(worker: string, key: string, load: number): void {
    const machine = this.hooks.entry(key)
    if (machine === undefined || machine.route.hostId !== worker || !Number.isInteger(load) || load < 0) return
    this.track(worker, key)
    this.setOthers(machine, load)
  }

  /** The worker refused a stream of ours at the hard limit. Called while our count still holds
   * the refused stream (the data path releases it next): after that release the Machine must
   * still look at its hard limit here, until a report says otherwise. */
  refused(worker: string, key: string, load: number): void {
    const machine = this.hooks.entry(key)
    if (machine === undefined || machine.route.hostId !== worker) return
    const ownAfterRelease = Math.max(0, machine.load - machine.othersLoad - 1)
    this.track(worker, key)
    this.setOthers(machine, Math.max(Number.isInteger(load) && load >= 0 ? load : 0, machine.hardLimit - ownAfterRelease))
  }

  /** The link to `worker` is gone: its last reports no longer hold. */
  clearWorker(worker: string): void {
    this.applyReport(worker, [])
  }

  private track(worker: string, key: string): void {
    let keys = this.reported.get(worker)
    if (keys === undefined) { keys = new Set(); this.reported.set(worker, keys) }
    keys.add(key)
  }

  private setOthers(machine: M, load: number): void {
    const delta = load - machine.othersLoad
    if (delta === 0) return
    machine.othersLoad = load
    machine.load += delta
    if (delta < 0) this.hooks.wake(machine)
  }
}
