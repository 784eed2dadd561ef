import { test } from 'node:test'
import assert from 'node:assert/strict'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushHttpServerImage, HTTP_SERVER_BODY, type LayerEntry } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'
import { eventually } from './kit/eventually.js'
import type { Machine } from '../src/core/index.js'
import { hostResolverAddress } from '../src/network/index.js'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { CLI_MAIN } from './kit/platform.js'

// `.internal` DNS end to end on a real host (issue 4; reference §3.3): `hangar host` runs
// `hangar dns` beside its catalog node, the agent points each Machine's /etc/resolv.conf at it,
// and from inside a Machine busybox's nslookup and wget resolve `<app>.internal` to the app's
// started Machines' 6PN addresses and `<id>.vm.<app>.internal` to one — while a Machine of
// another org sees none of it.

const APPLETS: LayerEntry[] = ['nslookup', 'cat'].map((a) => ({ path: `bin/${a}`, type: 'symlink', target: '/usr/bin/busybox' }))

test('Machines resolve .internal names through the host’s DNS', { timeout: 150_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushHttpServerImage(registry, 'web:v1', { extraLayers: [APPLETS] })
  // A second host in another region, in the same network namespace, joined by the catalog.
  platform = await startPlatform({ extraHosts: [{ region: 'sec' }] })
  const p = platform
  p.api.store.createOrg('rival')
  const rivalToken = p.api.store.createStaticToken('rival', 'test')
  const image = `${registry.host}/web:v1`

  const api = async (method: string, path: string, body?: unknown, token?: string) => {
    const res = await p.fetch(path, { method, token, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
    const text = await res.text()
    return { status: res.status, body: text ? JSON.parse(text) : undefined }
  }
  const createMachine = async (app: string, token?: string, region?: string): Promise<Machine> => {
    const created = await api('POST', `/v1/apps/${app}/machines`, { config: { image }, ...(region ? { region } : {}) }, token)
    assert.equal(created.status, 200, JSON.stringify(created.body))
    const id = created.body.id as string
    return eventually(`${app} Machine ${id} started`, async () => {
      const m = (await api('GET', `/v1/apps/${app}/machines/${id}`, undefined, token)).body as Machine
      return m.state === 'started' ? m : undefined
    }, 30_000)
  }
  const exec = async (app: string, id: string, command: string[], token?: string) => {
    const res = await api('POST', `/v1/apps/${app}/machines/${id}/exec`, { command, timeout: 10 }, token)
    assert.equal(res.status, 200, JSON.stringify(res.body))
    return res.body as { stdout: string; stderr: string; exit_code: number }
  }
  /** `nslookup` inside a Machine: the 6PN addresses it printed (the server line excluded). */
  const lookup = async (app: string, id: string, name: string, token?: string) => {
    const out = await exec(app, id, ['nslookup', '-type=AAAA', name], token)
    const addresses = [...out.stdout.split(/\n\s*\n/).slice(1).join('\n').matchAll(/Address:\s*(\S+)/g)].map((m) => m[1]!).sort()
    return { ...out, addresses }
  }

  assert.equal((await api('POST', '/v1/apps', { app_name: 'dnsweb', org_slug: 'personal' })).status, 201)
  assert.equal((await api('POST', '/v1/apps', { app_name: 'dnsrival', org_slug: 'rival' }, rivalToken)).status, 201)
  const [one, two] = [await createMachine('dnsweb', undefined, p.region), await createMachine('dnsweb', undefined, p.region)]
  const rival = await createMachine('dnsrival', rivalToken)
  const both = [one.private_ip, two.private_ip].sort()

  await t.test("the Machine's resolv.conf names the host's resolver address", async () => {
    const conf = await exec('dnsweb', one.id, ['cat', '/etc/resolv.conf'])
    const hostId = readFileSync(join(p.hostDir, 'host-id'), 'utf8').trim()
    assert.equal(conf.stdout, `nameserver ${hostResolverAddress(hostId)}\n`)
  })

  await t.test('<app>.internal resolves to both Machines, <id>.vm.<app>.internal to one', async () => {
    const app = await eventually('dnsweb.internal with both Machines', async () => {
      const result = await lookup('dnsweb', one.id, 'dnsweb.internal')
      return JSON.stringify(result.addresses) === JSON.stringify(both) ? result : undefined
    }, 20_000)
    assert.equal(app.exit_code, 0, app.stdout + app.stderr)
    const vm = await lookup('dnsweb', one.id, `${two.id}.vm.dnsweb.internal`)
    assert.deepEqual(vm.addresses, [two.private_ip])
    const txt = await exec('dnsweb', one.id, ['nslookup', '-type=TXT', 'vms.dnsweb.internal'])
    assert.match(txt.stdout, new RegExp(`text = "${[one.id, two.id].sort().map((id) => `${id} ${p.region}`).join(',')}"`))
  })

  await t.test('wget reaches the other Machine by its .internal name over 6PN', async () => {
    const got = await exec('dnsweb', one.id, ['wget', '-q', '-O', '-', `http://${two.id}.vm.dnsweb.internal:8080/`])
    assert.equal(got.exit_code, 0, got.stderr)
    assert.equal(got.stdout, HTTP_SERVER_BODY)
  })

  await t.test("a Machine of another org sees only its own org's names", async () => {
    const foreign = await lookup('dnsrival', rival.id, 'dnsweb.internal', rivalToken)
    assert.notEqual(foreign.exit_code, 0)
    assert.match(foreign.stdout, /NXDOMAIN/)
    assert.deepEqual(foreign.addresses, [])
    // The rival Machine was made last: its row may reach the host's DNS a moment after the others.
    const own = await eventually('dnsrival.internal from its own Machine', async () => {
      const result = await lookup('dnsrival', rival.id, 'dnsrival.internal', rivalToken)
      return result.addresses.length > 0 ? result : undefined
    }, 20_000)
    assert.deepEqual(own.addresses, [rival.private_ip])
    const apps = await exec('dnsrival', rival.id, ['nslookup', '-type=TXT', '_apps.internal'], rivalToken)
    assert.match(apps.stdout, /text = "dnsrival"/)
    const ours = await exec('dnsweb', one.id, ['nslookup', '-type=TXT', '_apps.internal'])
    assert.match(ours.stdout, /text = "dnsweb"/)
  })

  await t.test("the host's operators ask the same server with `hangar dns` and see every org", async () => {
    const hostId = readFileSync(join(p.hostDir, 'host-id'), 'utf8').trim()
    const run = (args: string[]) => new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => execFile(process.execPath, [CLI_MAIN, 'dns', ...args, '--server', hostResolverAddress(hostId)], { encoding: 'utf8' }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout, stderr })))
    const web = await run(['dnsweb.internal'])
    assert.equal(web.code, 0, web.stderr)
    assert.deepEqual(web.stdout.trim().split('\n').sort(), both)
    const apps = await run(['_apps.internal', 'TXT'])
    assert.equal(apps.stdout.trim(), '"dnsrival,dnsweb"')
  })

  await t.test('a stopped Machine leaves the answers; started again it comes back', async () => {
    assert.equal((await api('POST', `/v1/apps/dnsweb/machines/${two.id}/stop`)).status, 200)
    await eventually('dnsweb.internal without the stopped Machine', async () => {
      const result = await lookup('dnsweb', one.id, 'dnsweb.internal')
      if (JSON.stringify(result.addresses) === JSON.stringify([one.private_ip])) return true
      const state = ((await api('GET', `/v1/apps/dnsweb/machines/${two.id}`)).body as Machine).state
      const dnsLog = readFileSync(join(p.hostDir, 'logs', 'dns.log'), 'utf8').slice(-1500)
      throw new Error(`${two.id} is ${state}; nslookup: ${result.stdout} ${result.stderr}; the host's dns.log ends: ${dnsLog}`)
    }, 20_000)
    const stopped = await lookup('dnsweb', one.id, `${two.id}.vm.dnsweb.internal`)
    assert.deepEqual(stopped.addresses, [], 'AAAA answers list started Machines only')
    assert.equal((await api('POST', `/v1/apps/dnsweb/machines/${two.id}/start`)).status, 200)
    await eventually('dnsweb.internal with both again', async () => JSON.stringify((await lookup('dnsweb', one.id, 'dnsweb.internal')).addresses) === JSON.stringify(both), 20_000)
  })

  await t.test('a Machine on a second host: region names, nearest, its own host\'s resolver, reached across hosts', async () => {
    const far = await createMachine('dnsweb', undefined, 'sec')
    const secondHostId = readFileSync(join(p.extraHostDirs[0]!, 'host-id'), 'utf8').trim()
    const firstHostId = readFileSync(join(p.hostDir, 'host-id'), 'utf8').trim()
    const conf = await exec('dnsweb', far.id, ['cat', '/etc/resolv.conf'])
    assert.equal(conf.stdout, `nameserver ${hostResolverAddress(secondHostId)}\n`, 'each host answers its own Machines')
    assert.notEqual(hostResolverAddress(secondHostId), hostResolverAddress(firstHostId))
    // The first host learns the far Machine through catalog gossip.
    await eventually('sec.dnsweb.internal from the first host', async () => JSON.stringify((await lookup('dnsweb', one.id, 'sec.dnsweb.internal')).addresses) === JSON.stringify([far.private_ip]), 20_000)
    assert.deepEqual((await lookup('dnsweb', one.id, `${p.region}.dnsweb.internal`)).addresses, both)
    const regions = await exec('dnsweb', one.id, ['nslookup', '-type=TXT', 'regions.dnsweb.internal'])
    assert.match(regions.stdout, new RegExp(`text = "${['sec', p.region].sort().join(',')}"`))
    // Nearest from each side: a Machine on the asker's own host first.
    assert.deepEqual((await lookup('dnsweb', far.id, 'top1.nearest.of.dnsweb.internal')).addresses, [far.private_ip])
    const nearOne = (await lookup('dnsweb', one.id, 'top1.nearest.of.dnsweb.internal')).addresses
    assert.ok(nearOne.length === 1 && both.includes(nearOne[0]!), `the first host's Machines are nearest to it: ${nearOne.join(',')}`)
    assert.equal((await lookup('dnsweb', far.id, 'top3.nearest.of.dnsweb.internal')).addresses.length, 3)
    const got = await exec('dnsweb', far.id, ['wget', '-q', '-O', '-', `http://${one.id}.vm.dnsweb.internal:8080/`])
    assert.equal(got.exit_code, 0, got.stderr)
    assert.equal(got.stdout, HTTP_SERVER_BODY)
  })
})
