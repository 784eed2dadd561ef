import { test } from 'node:test'
import assert from 'node:assert/strict'
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

/** The host bits of a 6PN address (reference §3.4: fdaa | network 32 | host 32 | machine 32 | 16). */
const sixpnHost = (address: string) => Number((parseIpv6(address) >> 48n) & 0xffffffffn)
const sixpnNetwork = (address: string) => Number((parseIpv6(address) >> 80n) & 0xffffffffn)

function leftovers(cluster: Cluster, machineIds: string[]): string[] {
  const found: string[] = []
  const namespaces = existsSync('/var/run/netns') ? readdirSync('/var/run/netns') : []
  for (const ns of namespaces) if (ns.includes(cluster.star.suffix) || machineIds.some((id) => ns === `hangar-${id}`)) found.push(`netns ${ns}`)
  if (existsSync(`/sys/class/net/${cluster.star.rootVeth}`)) found.push(`link ${cluster.star.rootVeth}`)
  for (const host of cluster.hosts) if (existsSync(`/var/run/wireguard/${host.mesh?.interfaceName}.sock`)) found.push(`socket ${host.mesh?.interfaceName}`)
  const markers = [cluster.dir, ...cluster.hosts.map((h) => h.mesh?.interfaceName ?? h.dataDir), cluster.star.suffix]
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmdline = ''
    try { cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ') } catch { continue }
    if (markers.some((m) => cmdline.includes(m))) found.push(`process ${pid}: ${cmdline.slice(0, 120)}`)
  }
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) if (line.includes(cluster.dir)) found.push(`mount ${line.split(' ')[4]}`)
  if (existsSync(cluster.dir)) found.push(`dir ${cluster.dir}`)
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
      const res = await curl(host, `http://[${machine.private_ip}]:${HTTP_SERVER_PORT}/`)
      assert.equal(res.body, HTTP_SERVER_BODY, `the ${region} Machine answers on its host (curl exit ${res.code})`)
    }
  })

  await t.test('overlay RTT between ams and sjc (25 ms each way) is ≈ 50 ms; ams–fra (5 ms) ≈ 10 ms', async () => {
    const far = await c.overlayRtt(c.host('ams'), c.host('sjc'), 10)
    const near = await c.overlayRtt(c.host('ams'), c.host('fra'), 10)
    t.diagnostic(`ams→sjc ${JSON.stringify(far)}; ams→fra ${JSON.stringify(near)}`)
    assert.equal(far.received, 10)
    assert.ok(far.minMs >= 50 && far.minMs < 58, `ams→sjc min RTT ${far.minMs} ms`)
    assert.ok(far.avgMs < 80, `ams→sjc avg RTT ${far.avgMs} ms`)
    assert.ok(near.minMs >= 10 && near.minMs < 18, `ams→fra min RTT ${near.minMs} ms`)
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

  await t.test('close() removes every namespace, link, socket, process, mount and file', async () => {
    const ids = [...machines.values()].map((m) => m.id)
    const before = leftovers(c, ids)
    assert.ok(before.length > 0, 'the probe sees the running cluster')
    await c.close()
    await c.close()
    assert.deepEqual(leftovers(c, ids), [])
  })
})
