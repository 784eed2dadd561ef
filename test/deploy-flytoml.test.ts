import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushHttpServerImage } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'
import { cliOk, runCli } from './kit/deploy-cli.js'
import { requestOnce, startLoad, type LoadStats } from './kit/deploy-proxy.js'

// Deploys from fly.toml with real Machines (issue 5): the CLI (`hangar launch`, `deploy`, `scale`,
// `status`, `releases`) against a one-host platform and a real registry, two process groups, an
// http_service with checks, and the host's own proxy in front. A load loop runs through the
// proxy during every deploy and counts failed requests: good rolling and
// bluegreen deploys — and deploys that abort — must not fail a single one.

const V1 = 'release one\n'
const V2 = 'release two\n'

function flyToml(image: string, extra = ''): string {
  return `
app = "shop"
primary_region = "tst"
kill_signal = "SIGTERM"
kill_timeout = "5s"

[build]
  image = "${image}"

[env]
  GREETING = "hello"

[processes]
  web = ""
  worker = "sleep 3600"

[http_service]
  internal_port = 8080
  force_https = false
  auto_stop_machines = "off"
  auto_start_machines = false
  min_machines_running = 0
  processes = ["web"]
  [http_service.concurrency]
    type = "requests"
    soft_limit = 50
  [[http_service.checks]]
    interval = "1s"
    timeout = "1s"
    grace_period = "0s"
    method = "GET"
    path = "/"

[checks.alive]
  type = "tcp"
  port = 8080
  interval = "1s"
  timeout = "1s"
  processes = ["web"]

[[vm]]
  size = "shared-cpu-1x"

[deploy]
  strategy = "rolling"
  wait_timeout = "60s"
${extra}
`
}

test('deploys from fly.toml: process groups, strategies under load through the proxy, aborts that keep the old release serving', { timeout: 420_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  const dir = mkdtempSync(join(tmpdir(), 'hangar-deploy-'))
  t.after(async () => {
    await platform?.close()
    await registry?.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  registry = await startRegistry()
  await pushHttpServerImage(registry, 'shop:v1', { body: V1 })
  await pushHttpServerImage(registry, 'shop:v2', { body: V2 })
  await pushHttpServerImage(registry, 'shop:deaf', { config: { Cmd: ['sleep', '3600'] } })
  const image = (tag: string) => `${registry!.host}/shop:${tag}`
  platform = await startPlatform()
  const p = platform
  const cli = (args: string[]) => cliOk(args, { apiUrl: p.apiUrl, token: p.token, cwd: dir, timeoutMs: 180_000 })
  const tryCli = (args: string[]) => runCli(args, { apiUrl: p.apiUrl, token: p.token, cwd: dir, timeoutMs: 180_000 })
  const status = async () => JSON.parse(await cli(['status', '--json']))
  const served = (stats: LoadStats) => `${stats.requests} requests, ${stats.errors} errors ${JSON.stringify(stats.bodies)} ${stats.failures.join(' | ')}`
  const report: string[] = []
  writeFileSync(join(dir, 'fly.toml'), flyToml(image('v1'), '  release_command = "sh -c \'test $GREETING = hello\'"'))

  await t.test('launch creates the app from fly.toml; the first deploy runs the release command and makes one Machine per group', async () => {
    const launched = JSON.parse(await cli(['launch', '--json']))
    assert.deepEqual([launched.app, launched.createdApp, launched.wroteConfig], ['shop', true, false])
    const deploy = await tryCli(['deploy', '--json'])
    assert.equal(deploy.code, 0, deploy.stderr)
    const result = JSON.parse(deploy.stdout)
    assert.equal(result.ok, true)
    assert.equal(result.release.version, 1)
    assert.equal(result.releaseCommand.exitCode, 0)
    assert.deepEqual(result.groups.map((g: { group: string; machines: string[] }) => [g.group, g.machines.length]), [['web', 1], ['worker', 1]])
    assert.match(deploy.stderr, /running the release command/)
    assert.match(deploy.stderr, /web: 1 of 1 Machine\(s\) healthy/, 'progress names k of n')
    const scaled = JSON.parse(await cli(['scale', 'count', '2', '--process-group', 'web', '--json']))
    assert.deepEqual([scaled.before, scaled.after, scaled.created.length], [1, 2, 1])
    const s = await status()
    const web = s.machines.filter((m: { group: string }) => m.group === 'web')
    assert.equal(web.length, 2)
    assert.ok(web.every((m: { state: string; release: number; checks: { passing: number; total: number } }) => m.state === 'started' && m.release === 1 && m.checks.total === 2 && m.checks.passing === 2), JSON.stringify(web))
    assert.deepEqual(Object.keys(s.regions), ['tst'])
    const worker = s.machines.find((m: { group: string }) => m.group === 'worker')
    assert.equal(worker.checks.total, 0, 'top-level checks apply to the web group only')
    const machines = await p.client.listMachines('shop')
    const webConfig = machines.find((m) => m.config.metadata?.fly_process_group === 'web')!.config
    assert.equal(webConfig.env?.GREETING, 'hello')
    assert.equal(webConfig.metadata?.fly_release_version, '1')
    assert.deepEqual(webConfig.stop_config, { signal: 'SIGTERM', timeout: '5s' })
    assert.deepEqual(machines.find((m) => m.config.metadata?.fly_process_group === 'worker')!.config.init?.cmd, ['sleep', '3600'])
    // The proxy opens port 80 once it sees the service: wait until it answers, then it must not fail.
    const deadline = Date.now() + 20_000
    for (;;) {
      const probe = await requestOnce(p.proxyAddr, 'shop')
      if ('status' in probe && probe.status === 200 && probe.body === V1) break
      if (Date.now() > deadline) throw new Error(`the proxy does not serve shop: ${JSON.stringify(probe)}`)
      await new Promise((r) => setTimeout(r, 100))
    }
    const warmup = startLoad(p.proxyAddr, 'shop', [V1])
    await new Promise((r) => setTimeout(r, 300))
    const stats = await warmup.stop()
    assert.ok(stats.requests > 0 && stats.errors === 0, served(stats))
  })

  const underLoad = async (label: string, expected: string[], args: string[]) => {
    const load = startLoad(p.proxyAddr, 'shop', expected)
    const run = await tryCli(args)
    const stats = await load.stop()
    report.push(`${label}: ${stats.requests} requests through the proxy, ${stats.errors} errors`)
    return { run, stats }
  }

  await t.test('a rolling deploy replaces every Machine with zero failed requests through the proxy', async () => {
    const { run, stats } = await underLoad('rolling v1→v2', [V1, V2], ['deploy', '--image', image('v2'), '--json'])
    assert.equal(run.code, 0, run.stderr)
    assert.equal(JSON.parse(run.stdout).release.version, 2)
    assert.equal(stats.errors, 0, served(stats))
    assert.ok((stats.bodies[V2] ?? 0) > 0 && (stats.bodies[V1] ?? 0) > 0, served(stats))
    assert.match(run.stderr, /web: 1 of 2 Machine\(s\) updated and healthy/)
    assert.match(run.stderr, /cordoning .* draining/)
    const after = startLoad(p.proxyAddr, 'shop', [V2])
    await new Promise((r) => setTimeout(r, 300))
    assert.equal((await after.stop()).errors, 0, 'only the new release serves')
  })

  await t.test('a bluegreen deploy starts a new set, switches, destroys the old, with zero failed requests', async () => {
    const before = (await status()).machines.map((m: { id: string }) => m.id)
    const { run, stats } = await underLoad('bluegreen v2→v1', [V1, V2], ['deploy', '--image', image('v1'), '--strategy', 'bluegreen', '--json'])
    assert.equal(run.code, 0, run.stderr)
    assert.equal(stats.errors, 0, served(stats))
    const s = await status()
    assert.equal(s.machines.length, 3)
    assert.ok(s.machines.every((m: { id: string; release: number; cordoned: boolean }) => !before.includes(m.id) && m.release === 3 && !m.cordoned), JSON.stringify(s.machines))
    assert.match(run.stderr, /switching traffic to 3 green Machine\(s\)/)
  })

  await t.test('a bad image aborts; the previous release keeps serving without a failed request', async () => {
    // Without a release command the bad image is met by the first Machine update, which fails
    // before the Machine changes; the deployer lifts the cordon it set and stops.
    writeFileSync(join(dir, 'fly.toml'), flyToml(image('v1')))
    const before = (await status()).machines.map((m: { id: string; version: string }) => `${m.id}@${m.version}`).sort()
    const { run, stats } = await underLoad('bad image', [V1], ['deploy', '--image', image('missing'), '--json'])
    assert.equal(run.code, 1)
    const result = JSON.parse(run.stdout)
    assert.equal(result.ok, false)
    assert.equal(result.rolled_back, true)
    assert.match(result.error, /shop:missing/)
    assert.equal(stats.errors, 0, served(stats))
    const after = await status()
    assert.deepEqual(after.machines.map((m: { id: string; version: string }) => `${m.id}@${m.version}`).sort(), before)
    assert.ok(after.machines.every((m: { cordoned: boolean }) => !m.cordoned))
  })

  await t.test('a failing health check aborts and rolls back; the previous release keeps serving', async () => {
    const { run, stats } = await underLoad('failing check', [V1], ['deploy', '--image', image('deaf'), '--wait-timeout', '5s', '--json'])
    assert.equal(run.code, 1, run.stdout)
    const result = JSON.parse(run.stdout)
    assert.equal(result.rolled_back, true)
    assert.deepEqual(result.restore_failures, [])
    assert.match(result.error, /not healthy within 5s .*critical/)
    assert.match(run.stderr, /putting the previous release back/)
    assert.equal(stats.errors, 0, served(stats))
    const s = await status()
    assert.ok(s.machines.every((m: { release: number; image: string; state: string; cordoned: boolean }) => m.release === 3 && m.image === image('v1') && m.state === 'started' && !m.cordoned), JSON.stringify(s.machines))
  })

  await t.test('a failing release command aborts before any Machine changes', async () => {
    writeFileSync(join(dir, 'fly.toml'), flyToml(image('v2'), '  release_command = "sh -c \'exit 7\'"'))
    const before = (await status()).machines.map((m: { id: string; version: string }) => `${m.id}@${m.version}`).sort()
    const run = await tryCli(['deploy', '--json'])
    assert.equal(run.code, 1)
    assert.match(JSON.parse(run.stdout).error, /release command `sh -c exit 7` failed \(exit code 7\); no Machine was changed/)
    assert.deepEqual((await status()).machines.map((m: { id: string; version: string }) => `${m.id}@${m.version}`).sort(), before)
  })

  await t.test('releases list every deploy with its outcome', async () => {
    const releases = JSON.parse(await cli(['releases', '--json']))
    assert.deepEqual(releases.map((r: { version: number; status: string; strategy: string }) => [r.version, r.status, r.strategy]), [
      [6, 'failed', 'rolling'], [5, 'failed', 'rolling'], [4, 'failed', 'rolling'], [3, 'complete', 'bluegreen'], [2, 'complete', 'rolling'], [1, 'complete', 'rolling'],
    ])
    const human = await cli(['status'])
    assert.match(human, /Region tst \(3 Machines\)/)
    assert.match(human, /2\/2 passing\s+v3/)
    t.diagnostic(report.join('; '))
  })
})
