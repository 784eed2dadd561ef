import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { runCommand } from '../src/core/command.js'
import { isInvalidArgument } from '../src/core/index.js'
import { WireguardMesh, hostNumber, hostSixpnPrefix, overlayAddressFor, sixpnAddress, wireguardInterfaceName } from '../src/network/index.js'
import { createNetnsStar, type NetnsStar } from './kit/netns-star.js'

// The real mesh: two network namespaces on one underlay segment, a wireguard-go in each, pings
// over the tunnel (host-facts §4). Everything is removed after each test, also on failure.

async function ping6(star: NetnsStar, netns: string, to: string, count = 1): Promise<boolean> {
  const [command, args] = star.exec(netns, 'ping', ['-6', '-n', '-c', String(count), '-i', '0.2', '-W', '1', to])
  return (await runCommand(command, args, { allowFailure: true, timeoutMs: 20_000 })).code === 0
}

async function waitForPing(star: NetnsStar, netns: string, to: string): Promise<void> {
  // The first packets wait for the handshake; a few tries cover it.
  for (let attempt = 0; attempt < 20; attempt++) if (await ping6(star, netns, to)) return
  throw new Error(`no ping6 reply from ${to} in ${netns}`)
}

async function twoHosts(t: { after(fn: () => Promise<void> | void): void }) {
  const star = await createNetnsStar({ hosts: 2, prefix: 'hgwt' })
  const dir = mkdtempSync(join(tmpdir(), 'hangar-wgmesh-'))
  const meshes: WireguardMesh[] = []
  t.after(async () => {
    for (const mesh of meshes) await mesh.close()
    await star.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const start = async (index: number, hostId = `wgt${randomBytes(4).toString('hex')}`) => {
    const mesh = await WireguardMesh.start({ hostId, dataDir: join(dir, `host${index}`), netns: star.hosts[index]!.netns, listenPort: 51820 })
    meshes.push(mesh)
    return mesh
  }
  return { star, dir, meshes, start }
}

test('two hosts ping each other over the mesh; removing the peer cuts it; close leaves nothing', async (t) => {
  const { star, dir, start } = await twoHosts(t)
  const [a, b] = await Promise.all([start(0), start(1)])
  assert.equal(a.overlayAddress, overlayAddressFor(a.hostId))
  assert.equal(a.interfaceName, wireguardInterfaceName(a.hostId))
  assert.equal(a.listenPort, 51820)
  const keyFile = join(dir, 'host0', 'wireguard', 'private.key')
  assert.equal(statSync(keyFile).mode & 0o777, 0o600)

  // Before any peer: the overlay route exists but WireGuard has no one to send to.
  assert.equal(await ping6(star, star.hosts[0]!.netns, b.overlayAddress), false)

  const aPeer = a.selfPeer(`${star.hosts[0]!.address}:${a.listenPort}`)
  const bPeer = b.selfPeer(`${star.hosts[1]!.address}:${b.listenPort}`)
  assert.deepEqual(await a.setPeers([bPeer]), { added: [b.hostId], updated: [], removed: [] })
  assert.deepEqual(await b.setPeers([aPeer]), { added: [a.hostId], updated: [], removed: [] })
  await waitForPing(star, star.hosts[0]!.netns, b.overlayAddress)
  assert.ok(await ping6(star, star.hosts[1]!.netns, a.overlayAddress), 'and back')

  const [status] = await a.peers()
  assert.equal(status!.hostId, b.hostId)
  assert.equal(status!.publicKey, b.publicKey)
  assert.equal(status!.endpoint, `${star.hosts[1]!.address}:51820`)
  assert.ok(status!.latestHandshake, 'a handshake happened')
  assert.ok(status!.rxBytes > 0 && status!.txBytes > 0)

  // The same peer set again changes nothing.
  assert.deepEqual(await a.setPeers([bPeer]), { added: [], updated: [], removed: [] })

  // Removing the peer cuts the tunnel for good.
  assert.deepEqual(await a.setPeers([]), { added: [], updated: [], removed: [b.hostId] })
  assert.deepEqual(await a.peers(), [])
  assert.equal(await ping6(star, star.hosts[0]!.netns, b.overlayAddress, 2), false)
  assert.equal(await ping6(star, star.hosts[1]!.netns, a.overlayAddress, 2), false)

  // And adding it back restores it.
  await a.setPeers([bPeer])
  await waitForPing(star, star.hosts[0]!.netns, b.overlayAddress)

  const pid = a.pid!
  await a.close()
  await a.close()
  assert.ok(!existsSync(`/proc/${pid}`), 'wireguard-go has exited')
  assert.ok(!existsSync(`/var/run/wireguard/${a.interfaceName}.sock`), 'its UAPI socket is gone')
  const link = await runCommand('ip', ['-n', star.hosts[0]!.netns, 'link', 'show', a.interfaceName], { allowFailure: true })
  assert.notEqual(link.code, 0, 'the interface is gone')
  await assert.rejects(a.setPeers([bPeer]), /closed/)
})

test("a peer's Machine prefixes are routed through the tunnel; moving them follows the peer set", async (t) => {
  const { star, start } = await twoHosts(t)
  const [a, b] = await Promise.all([start(0), start(1)])
  // A stand-in Machine address on host B: org network 7, B's host number, Machine 1.
  const machineAddress = sixpnAddress(7, hostNumber(b.hostId), 1)
  await runCommand('ip', ['-n', star.hosts[1]!.netns, 'addr', 'add', `${machineAddress}/128`, 'dev', 'lo'])
  const bPrefix = hostSixpnPrefix(7, hostNumber(b.hostId))
  await b.setPeers([a.selfPeer(`${star.hosts[0]!.address}:51820`)])
  await a.setPeers([b.selfPeer(`${star.hosts[1]!.address}:51820`)])
  await waitForPing(star, star.hosts[0]!.netns, b.overlayAddress)
  assert.equal(await ping6(star, star.hosts[0]!.netns, machineAddress), false, 'not routed before the prefix is announced')

  await a.setPeers([b.selfPeer(`${star.hosts[1]!.address}:51820`, [bPrefix])])
  const routes = await runCommand('ip', ['-n', star.hosts[0]!.netns, '-6', 'route', 'show', 'dev', a.interfaceName])
  assert.match(routes.stdout, new RegExp(`^${bPrefix.replace(/[.:/]/g, '\\$&')} `, 'm'))
  await waitForPing(star, star.hosts[0]!.netns, machineAddress)

  await a.setPeers([b.selfPeer(`${star.hosts[1]!.address}:51820`)])
  const after = await runCommand('ip', ['-n', star.hosts[0]!.netns, '-6', 'route', 'show', 'dev', a.interfaceName])
  assert.ok(!after.stdout.includes(bPrefix.split('/')[0]!), 'the route went with the prefix')
  assert.equal(await ping6(star, star.hosts[0]!.netns, machineAddress), false)
})

test('restart: the same key from the data dir, and a wireguard-go left by a killed host is replaced', async (t) => {
  const { star, dir, meshes, start } = await twoHosts(t)
  const hostId = `wgt${randomBytes(4).toString('hex')}`
  const first = await start(0, hostId)
  const key = first.publicKey
  const stalePid = first.pid!
  // The managing process "dies": its wireguard-go keeps running (as after a SIGKILL of the host
  // without pdeathsig), so the next start must take the device over.
  const restarted = await WireguardMesh.start({ hostId, dataDir: join(dir, 'host0'), netns: star.hosts[0]!.netns, listenPort: 51820 })
  meshes.push(restarted)
  assert.equal(restarted.publicKey, key)
  assert.ok(!existsSync(`/proc/${stalePid}`) || readFileSync(`/proc/${stalePid}/stat`, 'utf8').includes(' Z '), 'the stale wireguard-go was stopped')
  assert.notEqual(restarted.pid, stalePid)
  const other = await start(1)
  await restarted.setPeers([other.selfPeer(`${star.hosts[1]!.address}:51820`)])
  await other.setPeers([restarted.selfPeer(`${star.hosts[0]!.address}:51820`)])
  await waitForPing(star, star.hosts[1]!.netns, restarted.overlayAddress)
})

test('bad input is refused with a typed error and leaves the device as it was', async (t) => {
  const { star, start } = await twoHosts(t)
  await assert.rejects(WireguardMesh.start({ hostId: 'x', dataDir: '/tmp/never', netns: 'no-such-netns-here' }), isInvalidArgument)
  await assert.rejects(WireguardMesh.start({ hostId: 'x', dataDir: '/tmp/never', listenPort: 70000 }), isInvalidArgument)
  const [a, b] = await Promise.all([start(0), start(1)])
  await a.setPeers([b.selfPeer(`${star.hosts[1]!.address}:51820`)])
  await assert.rejects(a.setPeers([{ ...b.selfPeer('nowhere'), hostId: b.hostId }]), (err: unknown) => isInvalidArgument(err) && /endpoint "nowhere"/.test((err as Error).message))
  await assert.rejects(a.setPeers([a.selfPeer()]), /own key/)
  const peers = await a.peers()
  assert.deepEqual(peers.map((p) => [p.publicKey, p.endpoint]), [[b.publicKey, `${star.hosts[1]!.address}:51820`]])
})

test("in the current namespace, as `hangar host` runs it: a mesh started without netns lives where its process does", async (t) => {
  const { star, dir, start } = await twoHosts(t)
  // A child process inside host 0's namespace starts the mesh the way a host would.
  const script = `
    const { WireguardMesh } = await import(${JSON.stringify(new URL('../src/network/index.js', import.meta.url).href)})
    const mesh = await WireguardMesh.start({ hostId: process.argv[1], dataDir: process.argv[2] })
    console.log(JSON.stringify({ publicKey: mesh.publicKey, overlayAddress: mesh.overlayAddress, listenPort: mesh.listenPort, interfaceName: mesh.interfaceName, hostId: mesh.hostId }))
    process.stdin.once('data', async (line) => { await mesh.setPeers(JSON.parse(line)); console.log('peers set') })
    process.once('SIGTERM', async () => { await mesh.close(); process.exit(0) })
  `
  const [command, args] = star.exec(star.hosts[0]!.netns, process.execPath, ['--input-type=module', '-e', script, `wgt${randomBytes(4).toString('hex')}`, join(dir, 'inside')])
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] })
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  const inside = JSON.parse((await lines.next()).value as string) as { publicKey: string; overlayAddress: string; listenPort: number; interfaceName: string; hostId: string }
  assert.equal(inside.listenPort, 51820)
  const link = await runCommand('ip', ['-n', star.hosts[0]!.netns, 'link', 'show', inside.interfaceName], { allowFailure: true })
  assert.equal(link.code, 0, 'the device is in the namespace of the process that started it')
  const rootLink = await runCommand('ip', ['link', 'show', inside.interfaceName], { allowFailure: true })
  assert.notEqual(rootLink.code, 0, 'and not in the test\'s')

  const other = await start(1)
  await other.setPeers([{ hostId: inside.hostId, publicKey: inside.publicKey, overlayAddress: inside.overlayAddress, endpoint: `${star.hosts[0]!.address}:51820` }])
  child.stdin!.write(JSON.stringify([other.selfPeer(`${star.hosts[1]!.address}:51820`)]) + '\n')
  assert.equal((await lines.next()).value, 'peers set')
  await waitForPing(star, star.hosts[1]!.netns, inside.overlayAddress)

  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  assert.equal(await exited, 0)
  assert.ok(!existsSync(`/var/run/wireguard/${inside.interfaceName}.sock`))
  assert.notEqual((await runCommand('ip', ['-n', star.hosts[0]!.netns, 'link', 'show', inside.interfaceName], { allowFailure: true })).code, 0)
})
