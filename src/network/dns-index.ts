import { DNS_TYPE, RCODE, formatIpv6, parseIpv4, parseIpv6, soaRdata, txtRdata, type DnsRecord, type DnsResponse } from './dns-wire.js'
import { INTERNAL_ZONE, type InternalName } from './dns-names.js'

// The in-memory index `.internal` DNS answers from (DESIGN "Network"; reference §3.3). The
// catalog feed (dns-catalog.ts) applies each machines/apps row change here; a query is a few
// map lookups plus the size of its answer. Pure: no sockets, no clock — tested exhaustively.
//
// Scoping (reference §3.4): a Machine sees only its own org's apps. The org is its 6PN network,
// the 32 bits after `fdaa` in every address of that org, so a query from a 6PN address carries
// its scope in its source address; a query over IPv4 (Hangar's resolv.conf points at the host
// bridge's IPv4 gateway) is scoped by the Machine that holds that address on this host.

/** A Machine as DNS needs it (from the catalog's machines row). */
export interface DnsMachine {
  id: string
  app: string
  hostId: string
  region: string
  state: string
  /** The 6PN address (`fdaa:…:2`). */
  privateIp: string
  /** The Machine's IPv4 on its host's bridge (the catalog's `address`). */
  ipv4: string
  processGroup: string
  metadata: Record<string, string>
}

export interface DnsApp {
  name: string
  /** The org's 6PN network number. */
  network: number
}

/** Who asks: an org's network (and the asking Machine when known), or the host itself (all orgs). */
export type DnsScope =
  | { kind: 'network'; network: number; querier?: DnsMachine }
  | { kind: 'host' }

export interface DnsAnswerOptions {
  ttl: number
  /** This host and region: "nearest" from the host's own view (queries without a querier). */
  hostId?: string
  region?: string
  /** Shuffles multi-address answers so clients that take the first spread their load. */
  random?: () => number
}

interface Entry {
  machine: DnsMachine
  network: number
  address: Buffer
  started: boolean
}

/** Machines of an app that share a region / process group / metadata pair. */
interface Bucket {
  all: Set<string>
  started: Map<string, Entry>
}

interface AppView {
  name: string
  /** From the apps table when it has the row; otherwise the network of its Machines. */
  declaredNetwork?: number
  machines: Map<string, Entry>
  started: Map<string, Entry>
  regions: Map<string, Bucket>
  groups: Map<string, Bucket>
  metadata: Map<string, Bucket>
}

const lower = (text: string) => text.toLowerCase()

/** The 6PN network number of an `fdaa:…` address (reference §3.4), or undefined. */
export function sixpnNetworkOf(address: string | Buffer): number | undefined {
  const bytes = typeof address === 'string' ? parseIpv6(address) : address
  if (!bytes || bytes.length !== 16 || bytes[0] !== 0xfd || bytes[1] !== 0xaa) return undefined
  const network = bytes.readUInt32BE(2)
  // Network 0 is no org's: it holds the resolver address fdaa::3 itself.
  return network === 0 ? undefined : network
}

function bucketAdd(map: Map<string, Bucket>, key: string, entry: Entry): void {
  let bucket = map.get(key)
  if (!bucket) { bucket = { all: new Set(), started: new Map() }; map.set(key, bucket) }
  bucket.all.add(entry.machine.id)
  if (entry.started) bucket.started.set(entry.machine.id, entry)
}

function bucketRemove(map: Map<string, Bucket>, key: string, machineId: string): void {
  const bucket = map.get(key)
  if (!bucket) return
  bucket.all.delete(machineId)
  bucket.started.delete(machineId)
  if (bucket.all.size === 0) map.delete(key)
}

const metadataKey = (key: string, value: string) => `${lower(key)}\u0000${lower(value)}`

export class DnsIndex {
  private readonly machines = new Map<string, Entry>()
  private readonly apps = new Map<string, AppView>()
  /** app name → network, from the apps table. */
  private readonly declaredApps = new Map<string, number>()
  private readonly by6pn = new Map<string, Entry>()
  /** `${hostId} ${ipv4}` → Machine. */
  private readonly byIpv4 = new Map<string, Entry>()
  private changes = 0

  /** Bumped on every change (the SOA serial). */
  get serial(): number { return this.changes }
  get size(): { machines: number; apps: number } { return { machines: this.machines.size, apps: this.apps.size } }

  private appView(name: string): AppView {
    let view = this.apps.get(name)
    if (!view) {
      view = { name, machines: new Map(), started: new Map(), regions: new Map(), groups: new Map(), metadata: new Map() }
      const declared = this.declaredApps.get(name)
      if (declared !== undefined) view.declaredNetwork = declared
      this.apps.set(name, view)
    }
    return view
  }

  private dropIfEmpty(view: AppView): void {
    if (view.machines.size === 0 && view.declaredNetwork === undefined) this.apps.delete(view.name)
  }

  /** Adds or replaces a Machine. Machines in terminal states, without a 6PN address, or with
   * `dns.skip_registration` should be removed instead (the feed decides). */
  upsertMachine(machine: DnsMachine): void {
    const address = parseIpv6(machine.privateIp)
    const network = address ? sixpnNetworkOf(address) : undefined
    if (!address || network === undefined) { this.removeMachine(machine.id); return }
    this.removeMachine(machine.id)
    const normal: DnsMachine = { ...machine, id: lower(machine.id), app: lower(machine.app), region: lower(machine.region), processGroup: lower(machine.processGroup) }
    const entry: Entry = { machine: normal, network, address, started: machine.state === 'started' }
    this.machines.set(normal.id, entry)
    this.by6pn.set(formatIpv6(address), entry)
    if (machine.ipv4) this.byIpv4.set(`${machine.hostId} ${machine.ipv4}`, entry)
    const view = this.appView(normal.app)
    view.machines.set(normal.id, entry)
    if (entry.started) view.started.set(normal.id, entry)
    bucketAdd(view.regions, normal.region, entry)
    bucketAdd(view.groups, normal.processGroup, entry)
    for (const [key, value] of Object.entries(machine.metadata)) bucketAdd(view.metadata, metadataKey(key, value), entry)
    this.changes++
  }

  removeMachine(machineId: string): void {
    const id = lower(machineId)
    const entry = this.machines.get(id)
    if (!entry) return
    this.machines.delete(id)
    const key6 = formatIpv6(entry.address)
    if (this.by6pn.get(key6) === entry) this.by6pn.delete(key6)
    const key4 = `${entry.machine.hostId} ${entry.machine.ipv4}`
    if (this.byIpv4.get(key4) === entry) this.byIpv4.delete(key4)
    const view = this.apps.get(entry.machine.app)
    if (view) {
      view.machines.delete(id)
      view.started.delete(id)
      bucketRemove(view.regions, entry.machine.region, id)
      bucketRemove(view.groups, entry.machine.processGroup, id)
      for (const [key, value] of Object.entries(entry.machine.metadata)) bucketRemove(view.metadata, metadataKey(key, value), id)
      this.dropIfEmpty(view)
    }
    this.changes++
  }

  upsertApp(app: DnsApp): void {
    const name = lower(app.name)
    this.declaredApps.set(name, app.network)
    this.appView(name).declaredNetwork = app.network
    this.changes++
  }

  removeApp(name: string): void {
    const key = lower(name)
    this.declaredApps.delete(key)
    const view = this.apps.get(key)
    if (view) { delete view.declaredNetwork; this.dropIfEmpty(view) }
    this.changes++
  }

  /** Replaces everything (a fresh catalog snapshot). */
  reset(machines: DnsMachine[], apps: DnsApp[]): void {
    this.machines.clear(); this.apps.clear(); this.declaredApps.clear(); this.by6pn.clear(); this.byIpv4.clear()
    for (const app of apps) this.upsertApp(app)
    for (const machine of machines) this.upsertMachine(machine)
  }

  machineBy6pn(address: string): DnsMachine | undefined {
    const bytes = parseIpv6(address)
    return bytes ? this.by6pn.get(formatIpv6(bytes))?.machine : undefined
  }

  machineByIpv4(hostId: string, address: string): DnsMachine | undefined {
    return this.byIpv4.get(`${hostId} ${address}`)?.machine
  }

  /** The scope of a query from `source` (reference §3.4), or undefined when the source is no
   * Machine this server knows and not the host itself (REFUSED). */
  scopeFor(source: string, options: { hostId?: string; hostSeesAll?: boolean } = {}): DnsScope | undefined {
    const address = source.startsWith('::ffff:') && source.includes('.') ? source.slice(7) : source
    if (parseIpv4(address)) {
      if (address.startsWith('127.')) return options.hostSeesAll === false ? undefined : { kind: 'host' }
      const machine = options.hostId !== undefined ? this.byIpv4.get(`${options.hostId} ${address}`) : undefined
      return machine ? { kind: 'network', network: machine.network, querier: machine.machine } : undefined
    }
    const bytes = parseIpv6(address)
    if (!bytes) return undefined
    // The host asking itself: loopback, or one of its resolver addresses in network 0 (a query
    // from the host to fdaa::3 leaves from fdaa::3). A Machine forging such a source gets nothing:
    // the answer goes to the host's own address.
    const hostItself = formatIpv6(bytes) === '::1' || (bytes[0] === 0xfd && bytes[1] === 0xaa && bytes.readUInt32BE(2) === 0)
    if (hostItself) return options.hostSeesAll === false ? undefined : { kind: 'host' }
    const network = sixpnNetworkOf(bytes)
    if (network === undefined) return undefined
    const querier = this.by6pn.get(formatIpv6(bytes))?.machine
    return querier ? { kind: 'network', network, querier } : { kind: 'network', network }
  }

  private networkOf(view: AppView): number | undefined {
    if (view.declaredNetwork !== undefined) return view.declaredNetwork
    for (const entry of view.machines.values()) return entry.network
    return undefined
  }

  /** The app, if the scope may see it. */
  private visibleApp(scope: DnsScope, name: string): AppView | undefined {
    const view = this.apps.get(name)
    if (!view) return undefined
    if (scope.kind === 'host') return view
    return this.networkOf(view) === scope.network ? view : undefined
  }

  /** A Machine of a visible app is shown only when it is in the scope's network too (a Machine
   * left in another org's network by a move is not this org's). */
  private visibleEntries(scope: DnsScope, entries: Iterable<Entry>): Entry[] {
    const out: Entry[] = []
    for (const entry of entries) if (scope.kind === 'host' || entry.network === scope.network) out.push(entry)
    return out
  }

  private appsInScope(scope: DnsScope): AppView[] {
    const out: AppView[] = []
    for (const view of this.apps.values()) if (scope.kind === 'host' || this.networkOf(view) === scope.network) out.push(view)
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  }

  /** The answer to one `.internal` question (rcode, records) — before the wire encoding. */
  answer(scope: DnsScope, name: InternalName | undefined, qtype: number, options: DnsAnswerOptions): DnsResponse {
    const soa: DnsRecord = { owner: [INTERNAL_ZONE], type: DNS_TYPE.SOA, ttl: options.ttl, rdata: soaRdata([INTERNAL_ZONE], this.changes, options.ttl) }
    const nxdomain: DnsResponse = { rcode: RCODE.NXDOMAIN, authoritative: true, recursionAvailable: true, answers: [], authority: [soa] }
    if (!name) return nxdomain
    // A name that exists answers its own type and NOERROR with no records for others (NODATA),
    // so a resolver asking A and AAAA gets the AAAA answer instead of giving up on NXDOMAIN.
    const reply = (type: number, rdatas: Buffer[]): DnsResponse => {
      const matches = qtype === type || qtype === DNS_TYPE.ANY
      if (!matches || rdatas.length === 0) return { rcode: RCODE.NOERROR, authoritative: true, recursionAvailable: true, answers: [], authority: [soa] }
      return { rcode: RCODE.NOERROR, authoritative: true, recursionAvailable: true, answers: rdatas.map((rdata) => ({ owner: 'question', type, ttl: options.ttl, rdata })), authority: [] }
    }
    const addresses = (entries: Entry[], shuffle = true): Buffer[] => {
      const list = entries.map((e) => e.address)
      if (shuffle && options.random) {
        for (let i = list.length - 1; i > 0; i--) {
          const j = Math.floor(options.random() * (i + 1))
          ;[list[i], list[j]] = [list[j]!, list[i]!]
        }
      }
      return list
    }
    const byId = (a: Entry, b: Entry) => (a.machine.id < b.machine.id ? -1 : a.machine.id > b.machine.id ? 1 : 0)
    switch (name.kind) {
      case 'apex':
        if (qtype === DNS_TYPE.SOA || qtype === DNS_TYPE.ANY) return { rcode: RCODE.NOERROR, authoritative: true, recursionAvailable: true, answers: [{ ...soa, owner: 'question' }], authority: [] }
        return reply(DNS_TYPE.TXT, [])
      case 'apps':
        return reply(DNS_TYPE.TXT, [txtRdata(this.appsInScope(scope).map((v) => v.name).join(','))])
      case 'instances': {
        const entries: Entry[] = []
        for (const view of this.appsInScope(scope)) entries.push(...this.visibleEntries(scope, (name.all ? view.machines : view.started).values()))
        entries.sort(byId)
        // reference §3.3: `id, app, 6PN IP, region` per Machine, as Fly writes it.
        const text = entries.map((e) => `instance=${e.machine.id},app=${e.machine.app},ip=${formatIpv6(e.address)},region=${e.machine.region}`).join(';')
        return reply(DNS_TYPE.TXT, entries.length ? [txtRdata(text)] : [])
      }
      case 'peers':
        // Hangar has no user WireGuard peers yet: the name exists and lists none.
        return reply(DNS_TYPE.TXT, [])
      case 'peer':
        return nxdomain
      default:
        break
    }
    const view = this.visibleApp(scope, name.app)
    if (!view) return nxdomain
    switch (name.kind) {
      case 'app':
        return reply(DNS_TYPE.AAAA, addresses(this.visibleEntries(scope, view.started.values())))
      case 'vms': {
        const entries = this.visibleEntries(scope, (name.all ? view.machines : view.started).values()).sort(byId)
        return reply(DNS_TYPE.TXT, entries.length ? [txtRdata(entries.map((e) => `${e.machine.id} ${e.machine.region}`).join(','))] : [])
      }
      case 'regions': {
        const regions = [...view.regions].filter(([, bucket]) => name.all || bucket.started.size > 0).map(([region]) => region).sort()
        return reply(DNS_TYPE.TXT, regions.length ? [txtRdata(regions.join(','))] : [])
      }
      case 'region': {
        const bucket = view.regions.get(name.region)
        return bucket ? reply(DNS_TYPE.AAAA, addresses(this.visibleEntries(scope, bucket.started.values()))) : nxdomain
      }
      case 'process': {
        const bucket = view.groups.get(name.group)
        return bucket ? reply(DNS_TYPE.AAAA, addresses(this.visibleEntries(scope, bucket.started.values()))) : nxdomain
      }
      case 'metadata': {
        const bucket = view.metadata.get(metadataKey(name.key, name.value))
        return bucket ? reply(DNS_TYPE.AAAA, addresses(this.visibleEntries(scope, bucket.started.values()))) : nxdomain
      }
      case 'vm': {
        const entry = view.machines.get(name.machineId)
        if (!entry || this.visibleEntries(scope, [entry]).length === 0) return nxdomain
        // reference §3.3: AAAA answers list started Machines only; a stopped one exists (NODATA).
        return reply(DNS_TYPE.AAAA, entry.started ? [entry.address] : [])
      }
      case 'nearest': {
        // Closest first: the asking Machine's host, then its region, then the rest (Hangar's
        // DNS has no latency table; the proxy measures RTT for traffic, DNS ranks by placement).
        const fromHost = scope.kind === 'network' && scope.querier ? scope.querier.hostId : options.hostId
        const fromRegion = scope.kind === 'network' && scope.querier ? scope.querier.region : options.region
        const rank = (e: Entry) => (e.machine.hostId === fromHost ? 0 : e.machine.region === lower(fromRegion ?? '') ? 1 : 2)
        const entries = this.visibleEntries(scope, view.started.values()).sort((a, b) => rank(a) - rank(b) || byId(a, b))
        return reply(DNS_TYPE.AAAA, addresses(entries.slice(0, name.count), false))
      }
    }
  }
}
