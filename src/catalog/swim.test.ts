import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { seededRandom, type Random } from './seeded-random.js'
import { parseSwimMessage, SwimMachine, type MemberEvent, type SwimConfig, type SwimMessage, type SwimOutput } from './swim.js'

// A simulated network and clock for the SWIM state machine: messages take a per-link latency,
// links can be cut (one way or both), nodes can be stopped (a crash: no ticks, nothing
// delivered) and started again with a new incarnation, as a restarted process would.

const STEP_MS = 10

interface InFlight { deliverAt: number; from: string; to: string; message: SwimMessage }

class SimNetwork {
  now = 0
  readonly machines = new Map<string, SwimMachine>()
  readonly stopped = new Set<string>()
  readonly events: Array<{ at: number; node: string; event: MemberEvent }> = []
  private readonly cut = new Set<string>()
  private inFlight: InFlight[] = []
  latencyMs = 1
  sent = 0

  constructor(private readonly random: Random, private readonly config: Partial<SwimConfig> = {}) {}

  addr(name: string): string { return `${name}:7000` }

  start(name: string, bootstrap: string[], incarnation = this.now + 1): SwimMachine {
    const machine = new SwimMachine({ id: name, addr: this.addr(name), meta: { hostId: `host-${name}` } }, { config: this.config, random: this.random, incarnation })
    this.machines.set(name, machine)
    this.stopped.delete(name)
    this.dispatch(name, machine.join(bootstrap.map((b) => this.addr(b)), this.now))
    return machine
  }

  stop(name: string): void {
    this.stopped.add(name)
    this.inFlight = this.inFlight.filter((m) => m.to !== this.addr(name))
  }

  cutLink(a: string, b: string, bothWays = true): void {
    this.cut.add(`${a}>${b}`)
    if (bothWays) this.cut.add(`${b}>${a}`)
  }

  healAll(): void { this.cut.clear() }

  partition(left: string[], right: string[]): void {
    for (const a of left) for (const b of right) this.cutLink(a, b)
  }

  private dispatch(from: string, outputs: SwimOutput[]): void {
    for (const output of outputs) {
      if (output.kind === 'event') { this.events.push({ at: this.now, node: from, event: output.event }); continue }
      const to = output.to.split(':')[0]!
      this.sent++
      if (this.cut.has(`${from}>${to}`)) continue
      // Through the wire: a copy, as a datagram would be.
      this.inFlight.push({ deliverAt: this.now + this.latencyMs, from, to, message: structuredClone(output.message) })
    }
  }

  run(durationMs: number, until?: () => boolean): number {
    const end = this.now + durationMs
    while (this.now < end) {
      this.now += STEP_MS
      const due = this.inFlight.filter((m) => m.deliverAt <= this.now)
      this.inFlight = this.inFlight.filter((m) => m.deliverAt > this.now)
      for (const m of due) {
        const machine = this.machines.get(m.to)
        if (!machine || this.stopped.has(m.to)) continue
        this.dispatch(m.to, machine.receive(this.addr(m.from), m.message, this.now))
      }
      for (const [name, machine] of this.machines) if (!this.stopped.has(name)) this.dispatch(name, machine.tick(this.now))
      if (until?.()) return this.now
    }
    return this.now
  }

  stateOf(observer: string, member: string): string | undefined {
    return this.machines.get(observer)!.member(member)?.state
  }

  /** Every running node other than `except` sees `member` in `state`. */
  allSee(member: string, state: string, except: string[] = []): boolean {
    return [...this.machines.keys()].filter((n) => n !== member && !this.stopped.has(n) && !except.includes(n)).every((n) => this.stateOf(n, member) === state)
  }
}

function cluster(names: string[], seed = 1, config: Partial<SwimConfig> = {}): SimNetwork {
  const net = new SimNetwork(seededRandom(seed), config)
  net.start(names[0]!, [])
  for (const name of names.slice(1)) net.start(name, [names[0]!])
  net.run(5_000, () => names.every((n) => names.filter((m) => m !== n).every((m) => net.stateOf(n, m) === 'alive')))
  return net
}

describe('SWIM state machine', () => {
  it('joins through a bootstrap node: everyone learns everyone within a couple of seconds', () => {
    const net = cluster(['a', 'b', 'c', 'd'])
    assert.ok(net.now <= 2_000, `took ${net.now} ms`)
    for (const n of ['a', 'b', 'c', 'd']) assert.equal(net.machines.get(n)!.liveMembers().length, 3)
    assert.equal(net.machines.get('b')!.member('c')!.meta.hostId, 'host-c')
  })

  it('notices a crashed node within a few seconds: suspect, then down, on every node', () => {
    const net = cluster(['a', 'b', 'c', 'd', 'e'])
    const killedAt = net.now
    net.stop('c')
    const detectedAt = net.run(10_000, () => net.allSee('c', 'down'))
    assert.ok(net.allSee('c', 'down'), 'everyone marks c down')
    assert.ok(detectedAt - killedAt <= 4_000, `detected after ${detectedAt - killedAt} ms`)
    const cEvents = net.events.filter((e) => e.event.member.id === 'c' && e.at > killedAt).map((e) => e.event.type)
    assert.ok(cEvents.includes('suspect') && cEvents.includes('down'))
  })

  it('does not suspect a node that only the direct link cannot reach (ping-req through k others)', () => {
    const net = cluster(['a', 'b', 'c', 'd'])
    net.cutLink('a', 'b')
    const since = net.now
    net.run(20_000)
    assert.ok(net.allSee('a', 'alive') && net.allSee('b', 'alive'))
    assert.equal(net.events.filter((e) => e.at > since && e.event.type === 'down').length, 0)
  })

  it('a suspected node refutes with a higher incarnation', () => {
    const net = cluster(['a', 'b', 'c'])
    const b = net.machines.get('b')!
    const before = b.incarnation
    // c falsely suspects b (as after a lost ack) and gossips it.
    const c = net.machines.get('c')!
    const outputs = c.receive(net.addr('a'), { type: 'ping', seq: 999, from: { id: 'a', addr: net.addr('a'), incarnation: net.machines.get('a')!.incarnation, state: 'alive', meta: {} }, updates: [{ id: 'b', addr: net.addr('b'), incarnation: before, state: 'suspect', meta: {} }] }, net.now)
    assert.ok(outputs.some((o) => o.kind === 'event' && o.event.type === 'suspect' && o.event.member.id === 'b'))
    net.run(3_000, () => net.allSee('b', 'alive') && b.incarnation > before && net.machines.get('c')!.member('b')!.incarnation > before)
    assert.ok(b.incarnation > before, 'b raised its incarnation')
    assert.ok(net.allSee('b', 'alive'))
    assert.ok(net.machines.get('a')!.member('b')!.incarnation > before)
  })

  it('a restarted node (same id, new incarnation) rejoins and is up everywhere', () => {
    const net = cluster(['a', 'b', 'c'])
    net.stop('b')
    net.run(10_000, () => net.allSee('b', 'down'))
    assert.ok(net.allSee('b', 'down'))
    const restartedAt = net.now
    net.start('b', ['a'])
    const upAt = net.run(5_000, () => net.allSee('b', 'alive') && net.machines.get('b')!.liveMembers().length === 2)
    assert.ok(net.allSee('b', 'alive'))
    assert.ok(upAt - restartedAt <= 2_000, `rejoined after ${upAt - restartedAt} ms`)
  })

  it('after a partition heals, both sides find each other again (down notices and refutation)', () => {
    const net = cluster(['a', 'b', 'c', 'd'], 7)
    net.partition(['a', 'b'], ['c', 'd'])
    net.run(15_000, () => net.stateOf('a', 'c') === 'down' && net.stateOf('c', 'a') === 'down' && net.stateOf('b', 'd') === 'down' && net.stateOf('d', 'b') === 'down')
    assert.equal(net.stateOf('a', 'c'), 'down')
    assert.equal(net.stateOf('c', 'a'), 'down')
    assert.equal(net.stateOf('a', 'b'), 'alive', 'each side keeps its own members')
    net.healAll()
    const healedAt = net.now
    const back = net.run(15_000, () => ['a', 'b', 'c', 'd'].every((n) => net.machines.get(n)!.liveMembers().length === 3))
    assert.ok(['a', 'b', 'c', 'd'].every((n) => net.machines.get(n)!.liveMembers().length === 3), 'everyone alive again')
    assert.ok(back - healedAt <= 5_000, `healed after ${back - healedAt} ms`)
  })

  it('a node that leaves is down everywhere at once', () => {
    const net = cluster(['a', 'b', 'c'])
    const c = net.machines.get('c')!
    const leftAt = net.now
    for (const output of c.leave()) {
      if (output.kind === 'send') net.machines.get(output.to.split(':')[0]!)!.receive(net.addr('c'), structuredClone(output.message), net.now)
    }
    net.stop('c')
    assert.ok(net.allSee('c', 'down'))
    assert.equal(net.now, leftAt)
  })

  it('measures RTT from direct pings', () => {
    const net = new SimNetwork(seededRandom(3))
    net.latencyMs = 20
    net.start('a', [])
    net.start('b', ['a'])
    net.start('c', ['a'])
    net.run(6_000)
    const rtt = net.machines.get('a')!.member('b')!.rttMs
    assert.ok(rtt !== null && rtt >= 40 && rtt <= 60, `rtt ${rtt}`)
  })

  it('a 20-node cluster has no false positives, and all notice a crash within a few seconds', () => {
    const names = Array.from({ length: 20 }, (_, i) => `n${i}`)
    const net = cluster(names, 11)
    assert.ok(names.every((n) => net.machines.get(n)!.liveMembers().length === 19), 'all joined')
    const since = net.now
    net.run(30_000)
    assert.equal(net.events.filter((e) => e.at > since && (e.event.type === 'suspect' || e.event.type === 'down')).length, 0, 'no false suspicion in 30 s')
    const killedAt = net.now
    net.stop('n7')
    const detectedAt = net.run(10_000, () => net.allSee('n7', 'down'))
    assert.ok(net.allSee('n7', 'down'))
    assert.ok(detectedAt - killedAt <= 5_000, `detected after ${detectedAt - killedAt} ms`)
    // Probing costs O(1) messages per node per period, not O(n).
    const perNodePerPeriod = net.sent / names.length / (net.now / 500)
    assert.ok(perNodePerPeriod < 6, `${perNodePerPeriod.toFixed(1)} messages per node per period`)
  })

  it('a slow (high RTT) link is not declared down: the ack timeout follows the measured RTT', () => {
    const net = new SimNetwork(seededRandom(5))
    net.latencyMs = 150
    net.start('a', [])
    net.start('b', ['a'])
    net.start('c', ['a'])
    net.run(20_000)
    assert.ok(net.allSee('b', 'alive') && net.allSee('c', 'alive') && net.allSee('a', 'alive'))
    assert.equal(net.events.filter((e) => e.event.type === 'down').length, 0)
  })

  it('refuses malformed datagrams', () => {
    const from = { id: 'x', addr: 'x:1', incarnation: 1, state: 'alive', meta: {} }
    assert.throws(() => parseSwimMessage(null), TypeError)
    assert.throws(() => parseSwimMessage({ type: 'ping', from, updates: [] }), /bad seq/)
    assert.throws(() => parseSwimMessage({ type: 'boom', from, updates: [] }), /unknown message type/)
    assert.throws(() => parseSwimMessage({ type: 'join', from: { ...from, incarnation: -1 }, updates: [] }), /incarnation/)
    assert.throws(() => parseSwimMessage({ type: 'join', from: { ...from, state: 'zombie' }, updates: [] }), /state/)
    assert.throws(() => parseSwimMessage({ type: 'join', from, updates: 'x' }), /updates/)
    assert.throws(() => parseSwimMessage({ type: 'join', from: { ...from, meta: { hostId: 5 } }, updates: [] }), /meta.hostId/)
    assert.deepEqual(parseSwimMessage({ type: 'ping-req', seq: 3, target: { id: 'y', addr: 'y:1' }, from, updates: [from] }).type, 'ping-req')
  })
})
