import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { App, CheckStatus, CreateMachineRequest, Machine, MachineConfig, UpdateMachineRequest } from '../core/index.js'
import { parseFlyToml } from '../config/index.js'
import { deploy, isDeployAborted, scaleCount, scaleVm, rollMachines, type DeployApi, type ReleaseRecord, type ProgressEvent } from './index.js'

// The deployer against an in-memory Machines API (a stand-in for the pure logic only; the real API
// is in test/deploy-*.test.ts). The fake records, after every call, which Machines of each group
// would get proxy traffic (started, not cordoned, service checks passing), so each strategy's
// promise — traffic never has nowhere to go, a bad release never stays — is checked step by step.

type Behaviour = 'ok' | 'bad-image' | 'failing-check' | 'crash'

class FakeApi implements DeployApi {
  readonly machines = new Map<string, Machine>()
  readonly releases: ReleaseRecord[] = []
  readonly calls: string[] = []
  /** group → routable Machine count, after every mutating call. */
  readonly routable: Array<Record<string, number>> = []
  private seq = 0
  constructor(private readonly behaviour: (image: string) => Behaviour = () => 'ok') {}

  async getApp(name: string): Promise<App> {
    if (name !== 'web') throw Object.assign(new Error(`app ${name} not found`), { status: 404 })
    return { id: 'web', name: 'web', machine_count: 0, volume_count: 0, network: '1', organization: { name: 'personal', slug: 'personal' }, status: 'deployed' }
  }
  async createApp(): Promise<App> { throw new Error('not used') }
  async listMachines(): Promise<Machine[]> { return [...this.machines.values()].filter((m) => m.state !== 'destroyed').map((m) => structuredClone(m)) }
  async getMachine(_app: string, id: string): Promise<Machine> {
    const m = this.machines.get(id)
    if (!m) throw Object.assign(new Error('not found'), { status: 404 })
    return structuredClone(m)
  }

  private checksFor(config: MachineConfig, behaviour: Behaviour): CheckStatus[] {
    const names = [...(config.services ?? []).flatMap((s, i) => (s.checks ?? []).map((c, j) => `servicecheck-${i}${j}-${c.type}`)), ...Object.keys(config.checks ?? {})]
    return names.map((name) => ({ name, status: behaviour === 'failing-check' ? 'critical' : 'passing', output: behaviour === 'failing-check' ? '[500]' : '[200] OK', updated_at: '' }))
  }

  private record(call: string): void {
    this.calls.push(call)
    const counts: Record<string, number> = {}
    for (const m of this.machines.values()) {
      const group = m.config.metadata?.fly_process_group ?? 'app'
      counts[group] ??= 0
      const serving = m.state === 'started' && !m.cordoned && (m.config.services?.length ?? 0) > 0 && (m.checks ?? []).every((c) => c.status === 'passing')
      if (serving) counts[group]++
    }
    this.routable.push(counts)
  }

  private boot(m: Machine): void {
    const behaviour = this.behaviour(m.config.image)
    if (behaviour === 'crash') {
      m.state = 'started'
      m.events.unshift({ id: `e${this.seq++}`, type: 'exit', status: 'stopped', source: 'flyd', timestamp: Date.now() + 1, request: { exit_event: { exit_code: 1, guest_exit_code: 1, guest_signal: 0, oom_killed: false, requested_stop: false, restarting: true, signal: 0, exited_at: '' } } })
    } else {
      m.state = 'started'
    }
    m.checks = this.checksFor(m.config, behaviour)
  }

  async createMachine(_app: string, request: CreateMachineRequest): Promise<Machine> {
    if (this.behaviour(request.config.image) === 'bad-image') throw Object.assign(new Error(`image ${request.config.image}: manifest unknown`), { status: 422 })
    const now = new Date(Date.now() + this.seq).toISOString()
    const m: Machine = {
      id: `m${String(++this.seq).padStart(3, '0')}`, name: `n${this.seq}`, state: 'created', region: request.region ?? 'ams', instance_id: `v${this.seq}`,
      private_ip: '', config: structuredClone(request.config), image_ref: { registry: '', repository: '', tag: '', digest: '', labels: {} },
      created_at: now, updated_at: now, events: [], host_status: 'ok', cordoned: request.skip_service_registration === true,
    }
    this.machines.set(m.id, m)
    if (!request.skip_launch) this.boot(m)
    // The release command: runs and auto-destroys.
    if (request.config.auto_destroy) {
      const code = request.config.init?.cmd?.includes('fail') ? 3 : 0
      m.events.unshift({ id: `e${this.seq++}`, type: 'exit', status: 'stopped', source: 'flyd', timestamp: Date.now(), request: { exit_event: { exit_code: code, guest_exit_code: code, guest_signal: 0, oom_killed: false, requested_stop: false, restarting: false, signal: 0, exited_at: '' } } })
      m.state = 'destroyed'
    }
    this.record(`create ${m.id} ${request.config.image}${m.cordoned ? ' cordoned' : ''}`)
    return structuredClone(m)
  }

  async updateMachine(_app: string, id: string, request: UpdateMachineRequest): Promise<Machine> {
    const m = this.machines.get(id)!
    if (request.current_version && request.current_version !== m.instance_id) throw Object.assign(new Error('version mismatch'), { status: 409 })
    if (this.behaviour(request.config.image) === 'bad-image') throw Object.assign(new Error(`image ${request.config.image}: manifest unknown`), { status: 422 })
    const wasStarted = m.state === 'started'
    m.config = structuredClone(request.config)
    m.instance_id = `v${++this.seq}`
    if (wasStarted) this.boot(m)
    else m.checks = []
    this.record(`update ${id} ${request.config.image}`)
    return structuredClone(m)
  }

  async destroyMachine(_app: string, id: string): Promise<unknown> { this.machines.get(id)!.state = 'destroyed'; this.record(`destroy ${id}`); return {} }
  async startMachine(): Promise<unknown> { return {} }
  async cordonMachine(_app: string, id: string): Promise<unknown> { this.machines.get(id)!.cordoned = true; this.record(`cordon ${id}`); return {} }
  async uncordonMachine(_app: string, id: string): Promise<unknown> { this.machines.get(id)!.cordoned = false; this.record(`uncordon ${id}`); return {} }
  async events(_app: string, id: string) { return this.machines.get(id)!.events }
  async createRelease(_app: string, body: { image: string; strategy: string }): Promise<ReleaseRecord> {
    const release: ReleaseRecord = { id: `r${this.releases.length + 1}`, version: this.releases.length + 1, image: body.image, strategy: body.strategy, status: 'running', created_at: '' }
    this.releases.push(release)
    return { ...release }
  }
  async updateRelease(_app: string, id: string, body: { status: ReleaseRecord['status']; error?: string }): Promise<ReleaseRecord> {
    const release = this.releases.find((r) => r.id === id)!
    release.status = body.status
    if (body.error) release.error = body.error
    return { ...release }
  }
  async listReleases() { return { releases: [...this.releases].reverse() } }

  live(group?: string): Machine[] {
    return [...this.machines.values()].filter((m) => m.state !== 'destroyed' && (!group || m.config.metadata?.fly_process_group === group))
  }
}

const FLY_TOML = `
app = "web"
primary_region = "ams"

[build]
  image = "registry.test/web:v1"

[processes]
  web = ""
  worker = "sleep inf"

[http_service]
  internal_port = 8080
  processes = ["web"]
  [[http_service.checks]]
    interval = "1s"
    timeout = "1s"
    path = "/"

[deploy]
  wait_timeout = "1s"
`

const fast = { pollIntervalMs: 1, drainMs: 0, smokeMs: 0 }
const config = parseFlyToml(FLY_TOML).config

async function deployed(api: FakeApi, webMachines = 2): Promise<void> {
  await deploy({ api, config, ...fast })
  if (webMachines > 1) await scaleCount({ api, app: 'web', count: webMachines, group: 'web', ...fast })
}

function minRoutable(api: FakeApi, group: string, fromCall = 0): number {
  return Math.min(...api.routable.slice(fromCall).map((r) => r[group] ?? 0))
}

test('first deploy: one Machine per process group, release metadata, release complete', async () => {
  const api = new FakeApi()
  const events: ProgressEvent[] = []
  const result = await deploy({ api, config, ...fast, progress: (e) => events.push(e) })
  assert.equal(result.release.version, 1)
  assert.equal(result.release.status, 'complete')
  assert.deepEqual(result.groups.map((g) => [g.group, g.machines.length, g.created]), [['web', 1, 1], ['worker', 1, 1]])
  const [web] = api.live('web')
  assert.equal(web!.config.metadata?.fly_release_version, '1')
  assert.equal(web!.config.metadata?.fly_release_id, 'r1')
  assert.equal(web!.region, 'ams')
  assert.deepEqual(web!.config.guest, { cpu_kind: 'shared', cpus: 1, memory_mb: 256 }, 'new Machines get the default size')
  assert.equal(api.live('worker')[0]!.config.services, undefined)
  assert.ok(events.some((e) => e.step === 'wait' && e.done === 1 && e.total === 1), 'progress says k of n')
})

for (const strategy of ['rolling', 'bluegreen', 'canary'] as const) {
  test(`${strategy}: a good deploy replaces every Machine and traffic always has somewhere to go`, async () => {
    const api = new FakeApi()
    await deployed(api)
    const before = api.live('web').map((m) => m.id)
    const from = api.routable.length
    const result = await deploy({ api, config, image: 'registry.test/web:v2', strategy, ...fast })
    assert.equal(result.release.status, 'complete')
    assert.ok(minRoutable(api, 'web', from) >= 1, `web had no routable Machine at some step: ${JSON.stringify(api.calls.slice(from))}`)
    const after = api.live('web')
    assert.equal(after.length, 2)
    assert.ok(after.every((m) => m.config.image === 'registry.test/web:v2' && !m.cordoned && m.config.metadata?.fly_release_version === '2'))
    if (strategy === 'bluegreen') {
      assert.ok(after.every((m) => !before.includes(m.id)), 'bluegreen replaces the Machines')
      assert.ok(api.calls.slice(from).some((c) => c.endsWith('cordoned')), 'green Machines start cordoned')
    } else {
      assert.deepEqual(after.map((m) => m.id).sort(), before.sort(), `${strategy} updates Machines in place`)
    }
    if (strategy === 'canary') assert.ok(api.calls.slice(from).some((c) => c.startsWith('destroy')), 'the canary is removed')
  })

  for (const failure of ['bad-image', 'failing-check'] as const) {
    test(`${strategy}: a ${failure} aborts, puts everything back, and the release is failed`, async () => {
      const api = new FakeApi((image) => (image.endsWith(':v2') ? failure : 'ok'))
      await deployed(api)
      const before = api.live().map((m) => [m.id, m.instance_id.length > 0 && m.config.image] as const)
      const from = api.routable.length
      await assert.rejects(deploy({ api, config, image: 'registry.test/web:v2', strategy, ...fast }), (err) => {
        assert.ok(isDeployAborted(err))
        assert.equal(err.rolledBack, true)
        assert.deepEqual(err.restoreFailures, [])
        assert.match(err.message, failure === 'bad-image' ? /manifest unknown/ : /not healthy within 1s .*critical/)
        return true
      })
      assert.ok(minRoutable(api, 'web', from) >= 1, `web lost all traffic: ${JSON.stringify(api.calls.slice(from))}`)
      const after = api.live().map((m) => [m.id, m.config.image] as const)
      assert.deepEqual(after.sort(), before.map(([id, image]) => [id, image]).sort(), 'the same Machines run the previous image')
      assert.ok(api.live().every((m) => !m.cordoned && m.state === 'started'))
      assert.equal(api.releases.at(-1)!.status, 'failed')
      assert.equal(api.releases.at(-2)!.status, 'complete')
    })
  }
}

test('immediate: every Machine at once, no waiting; a bad image changes nothing', async () => {
  const api = new FakeApi((image) => (image.endsWith(':bad') ? 'bad-image' : 'ok'))
  await deployed(api)
  const result = await deploy({ api, config, image: 'registry.test/web:v2', strategy: 'immediate', ...fast })
  assert.deepEqual(result.groups.map((g) => g.updated), [2, 1])
  await assert.rejects(deploy({ api, config, image: 'registry.test/web:bad', strategy: 'immediate', ...fast }), /manifest unknown/)
  assert.ok(api.live().every((m) => m.config.image === 'registry.test/web:v2'))
})

test('a Machine without checks that keeps crashing fails the smoke check', async () => {
  const api = new FakeApi((image) => (image.endsWith(':crash') ? 'crash' : 'ok'))
  await deploy({ api, config, ...fast })
  await assert.rejects(deploy({ api, config, image: 'registry.test/web:crash', ...fast, smokeMs: 20 }), /did not stay up \(its process exited with code 1\)/)
  assert.ok(api.live().every((m) => m.config.image === 'registry.test/web:v1'))
})

test('release command: runs first; a failure aborts before any Machine changes', async () => {
  const withRelease = (command: string) => parseFlyToml(FLY_TOML.replace('[deploy]', `[deploy]\n  release_command = "${command}"`)).config
  const api = new FakeApi()
  await deploy({ api, config, ...fast })
  const ok = await deploy({ api, config: withRelease('migrate up'), image: 'registry.test/web:v2', ...fast })
  assert.equal(ok.releaseCommand?.exitCode, 0)
  const from = api.calls.length
  await assert.rejects(deploy({ api, config: withRelease('migrate fail'), image: 'registry.test/web:v3', ...fast }), /release command `migrate fail` failed \(exit code 3\); no Machine was changed/)
  assert.deepEqual(api.calls.slice(from).filter((c) => c.startsWith('update')), [])
  assert.ok(api.live().every((m) => m.config.image === 'registry.test/web:v2'))
})

test('scale count adds clones and removes stopped-then-newest; scale vm resizes one at a time; secrets roll updates in place', async () => {
  const api = new FakeApi()
  await deployed(api, 1)
  const up = await scaleCount({ api, app: 'web', count: 3, group: 'web', ...fast })
  assert.equal(up.created.length, 2)
  assert.ok(api.live('web').every((m) => m.config.image === 'registry.test/web:v1'))
  const down = await scaleCount({ api, app: 'web', count: 1, group: 'web', ...fast })
  assert.deepEqual(down.destroyed.sort(), up.created.sort(), 'the newest go first')
  await assert.rejects(scaleCount({ api, app: 'web', count: 2, ...fast }), /several process groups \(web, worker\): give --process-group/)
  const vm = await scaleVm({ api, app: 'web', size: 'shared-cpu-2x', ...fast })
  assert.equal(vm.updated.length, 2)
  assert.ok(api.live().every((m) => m.config.guest?.memory_mb === 512 && m.config.guest.cpus === 2))
  const redeploy = await deploy({ api, config, image: 'registry.test/web:v2', ...fast })
  assert.equal(redeploy.release.status, 'complete')
  assert.ok(api.live().every((m) => m.config.guest?.memory_mb === 512), 'a deploy keeps the size when fly.toml names none')
  await assert.rejects(scaleVm({ api, app: 'web', size: 'huge-cpu-9x', ...fast }), /unknown VM size "huge-cpu-9x"/)
  const versions = api.live().map((m) => m.instance_id)
  const rolled = await rollMachines({ api, app: 'web', ...fast })
  assert.equal(rolled.updated.length, 2)
  assert.ok(api.live().every((m, i) => m.instance_id !== versions[i]))
})

test('groups removed from fly.toml lose their Machines; config errors stop a deploy before it starts', async () => {
  const api = new FakeApi()
  await deploy({ api, config, ...fast })
  const webOnly = parseFlyToml(FLY_TOML.replace('  worker = "sleep inf"\n', '')).config
  const result = await deploy({ api, config: webOnly, image: 'registry.test/web:v2', ...fast })
  assert.deepEqual(result.removedGroups, ['worker'])
  assert.equal(api.live('worker').length, 0)
  const noImage = parseFlyToml(FLY_TOML.replace('image = "registry.test/web:v1"', '')).config
  const calls = api.calls.length
  await assert.rejects(deploy({ api, config: noImage, ...fast }), /no image to deploy/)
  await assert.rejects(deploy({ api, config, app: 'nope', ...fast }), /app nope does not exist/)
  assert.equal(api.calls.length, calls)
  assert.equal(api.releases.length, 2, 'no release was recorded for deploys that could not start')
})
