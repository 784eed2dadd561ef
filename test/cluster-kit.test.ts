import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { runCommand } from '../src/core/command.js'
import type { Machine } from '../src/core/index.js'
import { hostNumber, parseIpv6 } from '../src/network/index.js'
import { startCluster, type Cluster, type ClusterHost } from './kit/cluster.js'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { HTTP_SERVER_BODY, HTTP_SERVER_PORT, pushHttpServerImage } from './kit/images.js'

// The multi-host kit works: four hosts in four regions come up in namespaces, register with the
// API, run a Machine each (pulled from the kit's registry), reach each other over the WireGuard
// mesh with the emulated WAN's delays, and leave nothing behind.

const REGIONS = ['ams', 'sjc', 'fra', 'syd']
const DELAYS = { 'ams:sjc': 25, 'ams:fra': 5, 'ams:syd': 40, 'sjc:fra': 30, 'sjc:syd': 35, 'fra:syd': 45 }

async function curl(host: ClusterHost, url: string, netns?: string): Promise<{ code: number; body: string }> {
  const [command, args] = netns ? ['nsenter', [`--net=/var/run/netns/${netns}`, '--', 'curl', '-s', '-m', '10', url]] : host.exec('curl', ['-s', '-m', '10', url])
  const result = await runCommand(command, args, { allowFailure: true, timeoutMs: 15_000 })
  return { code: result.code, body: result.stdout }
}

/** GETs until the body arrives: `started` means the guest's process runs, not that it listens yet. */
async function curlUntilAnswered(host: ClusterHost, url: string, netns?: string): Promise<{ code: number; body: string }> {
  const deadline = Date.now() + 15_000
  for (;;) {
    const res = await curl(host, url, netns)
    if (res.code === 0 || Date.now() > deadline) return res
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** The host bits of a 6PN address (reference §3.4: fdaa | network 32 | host 32 | machine 32 | 16). */
const sixpnHost = (address: string) => Number((parseIpv6(address) >> 48n) & 0xffffffffn)
const sixpnNetwork = (address: string) => Number((parseIpv6(address) >> 80n) & 0xffffffffn)

interface Footprint { suffix: string; rootVeth: string; dir: string; hostIds: string[]; interfaces: string[]; machineIds: string[] }

const footprint = (cluster: Cluster, machineIds: string[] = []): Footprint => ({
  suffix: cluster.star.suffix, rootVeth: cluster.star.rootVeth, dir: cluster.dir, machineIds,
  hostIds: cluster.hosts.map((h) => h.hostId), interfaces: cluster.hosts.flatMap((h) => (h.mesh ? [h.mesh.interfaceName] : [])),
})

/** Everything of a cluster still on the machine: namespaces, links, sockets, processes, mounts,
 * cgroups, files. */
function leftovers(print: Footprint): string[] {
  const found: string[] = []
  const namespaces = existsSync('/var/run/netns') ? readdirSync('/var/run/netns') : []
  for (const ns of namespaces) if (ns.includes(print.suffix) || print.machineIds.some((id) => ns === `hangar-${id}`)) found.push(`netns ${ns}`)
  if (existsSync(`/sys/class/net/${print.rootVeth}`)) found.push(`link ${print.rootVeth}`)
  for (const name of print.interfaces) if (existsSync(`/var/run/wireguard/${name}.sock`)) found.push(`socket ${name}`)
  const markers = [print.dir, print.suffix, ...print.interfaces]
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmdline = ''
    try { cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ') } catch { continue }
    if (markers.some((m) => cmdline.includes(m))) found.push(`process ${pid}: ${cmdline.slice(0, 120)}`)
  }
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) if (line.includes(print.dir)) found.push(`mount ${line.split(' ')[4]}`)
  for (const hostId of print.hostIds) {
    // The agent's cgroup parent per host (src/agent/agent-process.ts), in every v1 hierarchy.
    const parent = `hangar-${createHash('sha256').update(hostId).digest('hex').slice(0, 8)}`
    for (const controller of readdirSync('/sys/fs/cgroup')) if (existsSync(`/sys/fs/cgroup/${controller}/${parent}`)) found.push(`cgroup ${controller}/${parent}`)
  }
  if (existsSync(print.dir)) found.push(`dir ${print.dir}`)
  return found
}

test('a 4-region cluster: hosts register, run Machines, reach each other over the delayed mesh, and leave nothing', { timeout: 240_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let cluster: Cluster | undefined
  t.after(async () => { await cluster?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushHttpServerImage(registry, 'http:v1')

  cluster = await startCluster({ regions: REGIONS, delays: DELAYS, registry })
  const c = cluster
  t.diagnostic(`start-up ${c.timings.total} ms: ${JSON.stringify(c.timings)}`)
  assert.ok(c.timings.total! < 30_000, `4 hosts took ${c.timings.total} ms to come up`)
  assert.equal(c.hosts.length, 4)
  assert.equal(new Set(c.hosts.map((h) => h.overlayAddress)).size, 4)
  assert.equal(c.natsUrls.length, 3)

  await t.test('every region is listed by the API', async () => {
    const res = await c.fetch('/v1/platform/regions')
    assert.equal(res.status, 200)
    const body = await res.json() as { regions: Array<{ code: string }> }
    assert.deepEqual(body.regions.map((r) => r.code).sort(), [...REGIONS].sort())
  })

  const machines = new Map<string, Machine>()
  await t.test('a Machine in each region, on that region’s host, pulled from the kit’s registry', async () => {
    const created = await c.fetch('/v1/apps', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ app_name: 'kit', org_slug: c.org }) })
    assert.equal(created.status, 201, await created.clone().text())
    await Promise.all(REGIONS.map(async (region) => {
      const res = await c.fetch('/v1/apps/kit/machines', {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ region, config: { image: `${registry!.host}/http:v1`, guest: { cpus: 1, memory_mb: 256, cpu_kind: 'shared' } } }),
      })
      const machine = await res.json() as Machine
      assert.equal(res.status, 200, JSON.stringify(machine))
      machines.set(region, machine)
    }))
    for (const region of REGIONS) {
      const machine = machines.get(region)!
      const host = c.host(region)
      assert.equal(machine.region, region)
      assert.equal(machine.state, 'started')
      assert.equal(sixpnHost(machine.private_ip), hostNumber(host.hostId), `the ${region} Machine runs on ${host.name}`)
      const res = await curlUntilAnswered(host, `http://[${machine.private_ip}]:${HTTP_SERVER_PORT}/`)
      assert.equal(res.body, HTTP_SERVER_BODY, `the ${region} Machine answers on its host (curl exit ${res.code})`)
    }
  })

  await t.test('overlay RTT between ams and sjc (25 ms each way) is ≈ 50 ms; ams–fra (5 ms) ≈ 10 ms', async () => {
    const far = await c.overlayRtt(c.host('ams'), c.host('sjc'), 10)
    const near = await c.overlayRtt(c.host('ams'), c.host('fra'), 10)
    t.diagnostic(`ams→sjc ${JSON.stringify(far)}; ams→fra ${JSON.stringify(near)}`)
    assert.equal(far.received, 10)
    assert.ok(far.minMs >= 50 && far.minMs < 58, `ams→sjc min RTT ${far.minMs} ms`)
    assert.ok(far.medianMs < 75, `ams→sjc median RTT ${far.medianMs} ms`)
    assert.ok(near.minMs >= 10 && near.minMs < 18, `ams→fra min RTT ${near.minMs} ms`)
  })

  await t.test("the hosts' catalog nodes find each other over the mesh and measure the emulated WAN's RTT", async () => {
    const ams = c.host('ams')
    const deadline = Date.now() + 20_000
    let members: Array<{ host_id: string | null; region: string | null; state: string; rtt_ms: number | null; addr: string }> = []
    for (;;) {
      try { members = await (await fetch(`${ams.catalogUrl}/v1/members`)).json() as typeof members } catch { members = [] }
      const sjc = members.find((m) => m.region === 'sjc')
      if (members.filter((m) => m.state === 'alive').length === 3 && sjc?.rtt_ms) break
      if (Date.now() > deadline) assert.fail(`ams's catalog members: ${JSON.stringify(members)}`)
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    t.diagnostic(`ams's catalog members: ${JSON.stringify(members.map((m) => [m.region, m.state, m.rtt_ms]))}`)
    for (const member of members) assert.match(member.addr, /^\[fdaa:ffff:0:[0-9a-f:]+\]:\d+$/, 'gossip over overlay addresses')
    const sjcRtt = members.find((m) => m.region === 'sjc')!.rtt_ms!
    assert.ok(sjcRtt >= 50 && sjcRtt < 75, `the catalog measured ${sjcRtt} ms to sjc for 2 × 25 ms`)
  })

  await t.test("Machines of one org reach each other's across hosts once their networks are routed", async () => {
    const ams = machines.get('ams')!
    const sjc = machines.get('sjc')!
    const network = sixpnNetwork(ams.private_ip)
    await c.routeMachineNetworks([network])
    const url = `http://[${sjc.private_ip}]:${HTTP_SERVER_PORT}/`
    const fromHost = await curl(c.host('ams'), url)
    assert.equal(fromHost.body, HTTP_SERVER_BODY, `ams host → sjc Machine (curl exit ${fromHost.code})`)
    const fromMachine = await curl(c.host('ams'), url, `hangar-${ams.id}`)
    assert.equal(fromMachine.body, HTTP_SERVER_BODY, `ams Machine → sjc Machine (curl exit ${fromMachine.code})`)
  })

  await t.test('a partitioned host is cut off the mesh until healed', async () => {
    const syd = c.host('syd')
    await c.partition(syd)
    await assert.rejects(c.overlayRtt(c.host('ams'), syd, 2), /no replies/)
    await c.heal(syd)
    const back = await c.overlayRtt(c.host('ams'), syd, 3)
    assert.ok(back.received >= 1 && back.minMs >= 80, `ams→syd after heal: ${JSON.stringify(back)}`)
  })

  await t.test('a host killed outright comes back on restart; its Machine kept running and the mesh stayed up', async () => {
    const fra = c.host('fra')
    const agentPid = fra.agentPid()
    await fra.stop('SIGKILL')
    assert.equal(fra.pid(), undefined)
    assert.ok(agentPid)
    assert.ok(!existsSync(`/proc/${agentPid}/status`) || /State:\s+Z/.test(readFileSync(`/proc/${agentPid}/status`, 'utf8')), 'the agent died with it')
    assert.ok((await c.overlayRtt(c.host('ams'), fra, 1)).received === 1, 'the mesh belongs to the machine, not the process')
    await fra.start()
    assert.ok(fra.pid())
    const machine = machines.get('fra')!
    const res = await curlUntilAnswered(fra, `http://[${machine.private_ip}]:${HTTP_SERVER_PORT}/`)
    assert.equal(res.body, HTTP_SERVER_BODY)
    const got = await c.fetch(`/v1/apps/kit/machines/${machine.id}`)
    assert.equal((await got.json() as Machine).state, 'started')
  })

  await t.test('close() removes every namespace, link, socket, process, mount and file', async () => {
    const ids = [...machines.values()].map((m) => m.id)
    const print = footprint(c, ids)
    assert.ok(leftovers(print).length > 0, 'the probe sees the running cluster')
    await c.close()
    await c.close()
    t.diagnostic(`close: ${JSON.stringify(Object.fromEntries(Object.entries(c.timings).filter(([k]) => k.startsWith('close_'))))}`)
    assert.deepEqual(leftovers(print), [])
  })
})

test('a host that cannot start fails startCluster quickly, with its log, and leaves nothing', { timeout: 120_000 }, async () => {
  const before = new Set(existsSync('/var/run/netns') ? readdirSync('/var/run/netns') : [])
  const began = Date.now()
  await assert.rejects(startCluster({ regions: ['ams', 'sjc'], hostArgs: (host) => (host.index === 1 ? ['--no-such-flag'] : []) }),
    (err: Error) => /hangar host h1 exited/.test(err.message) && /no-such-flag/.test(err.message))
  assert.ok(Date.now() - began < 30_000)
  const after = (existsSync('/var/run/netns') ? readdirSync('/var/run/netns') : []).filter((ns) => !before.has(ns) && ns.startsWith('hgc-'))
  assert.deepEqual(after, [])
})

test('Ctrl-C on the test process tears its clusters down', { timeout: 120_000 }, async () => {
  const script = `
    const { startCluster } = await import(${JSON.stringify(new URL('./kit/cluster.js', import.meta.url).href)})
    const c = await startCluster({ regions: ['ams', 'sjc'] })
    console.log(JSON.stringify({ suffix: c.star.suffix, rootVeth: c.star.rootVeth, dir: c.dir, hostIds: c.hosts.map((h) => h.hostId), interfaces: c.hosts.map((h) => h.mesh.interfaceName), machineIds: [] }))
    setInterval(() => {}, 1000)
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  let print: Footprint | undefined
  try {
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', resolve)
      child.once('exit', (code) => reject(new Error(`the cluster script exited (${code}) before printing`)))
    })
    print = JSON.parse(line) as Footprint
    assert.ok(leftovers(print).length > 0)
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    child.kill('SIGINT')
    assert.equal(await exited, 130)
    assert.deepEqual(leftovers(print), [])
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL')
  }
})
