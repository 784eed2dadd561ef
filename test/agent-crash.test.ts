import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCommand } from '../src/core/command.js'
import { crunDriverRunDir } from '../src/runtime/index.js'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushBusyboxImage, pushHttpServerImage } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'
import type { Machine, MachineState } from '../src/core/index.js'

// The agent is killed with SIGKILL in the middle of each operation kind — at the begin or end of
// a step, recorded in its operation log just before — and the host's supervisor restarts it. Every
// Machine must end in the legal, correct state for the operation it was in, with no leaked guest,
// mount or network namespace.

interface CrashCase {
  kind: string
  step: string
  phase: 'begin' | 'done'
  /** Puts a fresh Machine in the state the operation starts from. */
  from: 'none' | 'started' | 'stopped' | 'suspended'
  /** Runs the operation against the API (its answer is lost with the agent). */
  run(p: Platform, machineId: string): Promise<unknown>
  expect: MachineState
}

const post = (p: Platform, path: string, body?: unknown) =>
  p.fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(120_000) })

let image = ''
let image2 = ''
const create = (p: Platform, launch = true) => post(p, '/v1/apps/crash/machines', { config: { image, init: { cmd: ['sh', '-c', 'trap "exit 0" TERM INT; while :; do sleep 0.1; done'] } }, skip_launch: !launch })

const CASES: CrashCase[] = [
  ...['record_created', 'enter_starting', 'prepare_rootfs', 'write_guest_files', 'setup_network', 'launch_guest'].map((step): CrashCase => ({ kind: 'create', step, phase: 'begin', from: 'none', run: (p) => create(p), expect: 'started' })),
  { kind: 'create', step: 'launch_guest', phase: 'done', from: 'none', run: (p) => create(p), expect: 'started' },
  ...['prepare_rootfs', 'setup_network', 'launch_guest'].map((step): CrashCase => ({ kind: 'start', step, phase: 'begin', from: 'stopped', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/start`), expect: 'started' })),
  { kind: 'start', step: 'launch_guest', phase: 'done', from: 'stopped', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/start`), expect: 'started' },
  ...['signal_guest', 'await_exit', 'teardown_guest', 'enter_stopped'].map((step): CrashCase => ({ kind: 'stop', step, phase: 'begin', from: 'started', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/stop`), expect: 'stopped' })),
  { kind: 'stop', step: 'signal_guest', phase: 'done', from: 'started', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/stop`), expect: 'stopped' },
  { kind: 'suspend', step: 'freeze_guest', phase: 'begin', from: 'started', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/suspend`), expect: 'suspended' },
  { kind: 'suspend', step: 'freeze_guest', phase: 'done', from: 'started', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/suspend`), expect: 'suspended' },
  { kind: 'start', step: 'thaw_guest', phase: 'done', from: 'suspended', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/start`), expect: 'started' },
  ...['await_exit', 'teardown_guest', 'launch_guest'].map((step): CrashCase => ({ kind: 'restart', step, phase: 'begin', from: 'started', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/restart`), expect: 'started' })),
  ...['apply_version', 'launch_guest'].map((step): CrashCase => ({
    kind: 'update', step, phase: 'begin', from: 'started', expect: 'started',
    run: (p, id) => post(p, `/v1/apps/crash/machines/${id}`, { config: { image: image2 } }),
  })),
  ...['kill_guest', 'release_all', 'enter_destroyed'].map((step): CrashCase => ({ kind: 'destroy', step, phase: 'begin', from: 'started', run: (p, id) => p.fetch(`/v1/apps/crash/machines/${id}?force=true`, { method: 'DELETE', signal: AbortSignal.timeout(120_000) }), expect: 'destroyed' })),
  { kind: 'destroy', step: 'release_all', phase: 'begin', from: 'stopped', run: (p, id) => p.fetch(`/v1/apps/crash/machines/${id}`, { method: 'DELETE', signal: AbortSignal.timeout(120_000) }), expect: 'destroyed' },
  { kind: 'signal', step: 'send_signal', phase: 'begin', from: 'started', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/signal`, { signal: 'SIGUSR2' }), expect: 'started' },
  { kind: 'exec', step: 'run_exec', phase: 'begin', from: 'started', run: (p, id) => post(p, `/v1/apps/crash/machines/${id}/exec`, { command: ['true'] }), expect: 'started' },
]

async function guestFacts(p: Platform, machineId: string): Promise<{ guest: boolean; netns: boolean; mounted: boolean; dir: boolean }> {
  const list = await runCommand('crun', ['--root', join(crunDriverRunDir(join(p.hostDir, 'runtime')), 'crun'), 'list', '-q'], { allowFailure: true })
  const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')
  return {
    guest: list.stdout.split('\n').includes(machineId),
    netns: existsSync(`/var/run/netns/hangar-${machineId}`),
    mounted: mountinfo.includes(join(p.hostDir, 'machines', machineId, 'rootfs')),
    dir: existsSync(join(p.hostDir, 'machines', machineId)),
  }
}

async function settle(p: Platform, machineId: string): Promise<Machine> {
  const deadline = Date.now() + 60_000
  for (;;) {
    const res = await p.fetch(`/v1/apps/crash/machines/${machineId}/wait?state=settled&timeout=10`)
    if (res.status === 200) return (await p.fetch(`/v1/apps/crash/machines/${machineId}`)).json() as Promise<Machine>
    if (Date.now() > deadline) throw new Error(`machine ${machineId} did not settle: ${res.status} ${await res.text()}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

test('agent crash recovery: SIGKILL in every operation kind, then every Machine is in a correct state with nothing leaked', { timeout: 600_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushBusyboxImage(registry, 'busybox:v1')
  await pushHttpServerImage(registry, 'http:v1')
  image = `${registry.host}/busybox:v1`
  image2 = `${registry.host}/http:v1`
  platform = await startPlatform()
  const p = platform
  assert.equal((await post(p, '/v1/apps', { app_name: 'crash', org_slug: 'personal' })).status, 201)

  for (const crash of CASES) {
    await t.test(`${crash.kind}: killed at ${crash.step} (${crash.phase})`, async () => {
      // The Machine the operation acts on.
      let machineId = ''
      let versionBefore = ''
      if (crash.from !== 'none') {
        const machine = await (await create(p)).json() as Machine
        machineId = machine.id
        versionBefore = machine.instance_id
        if (crash.from === 'stopped') assert.equal((await post(p, `/v1/apps/crash/machines/${machineId}/stop`)).status, 200)
        if (crash.from === 'suspended') assert.equal((await post(p, `/v1/apps/crash/machines/${machineId}/suspend`)).status, 200)
      }
      const idsBefore = new Set(((await (await p.fetch('/v1/apps/crash/machines?include_deleted=true')).json()) as Machine[]).map((m) => m.id))
      const pidBefore = p.agentPid()
      writeFileSync(p.crashPointsFile, `${crash.kind}:${crash.step}:${crash.phase}\n`)
      const pending = crash.run(p, machineId).catch(() => undefined)
      const pidAfter = await p.waitForAgent(pidBefore)
      assert.notEqual(pidAfter, pidBefore, 'the agent was killed and restarted by the supervisor')
      assert.equal(readFileSync(p.crashPointsFile, 'utf8').trim(), '', 'the crash point was reached')
      void pending
      if (crash.kind === 'create') {
        const list = await (await p.fetch('/v1/apps/crash/machines?include_deleted=true')).json() as Machine[]
        const created = list.filter((m) => !idsBefore.has(m.id))
        assert.equal(created.length, 1, 'the Machine being created was not lost (nor duplicated)')
        machineId = created[0]!.id
      }
      const machine = await settle(p, machineId)
      assert.equal(machine.state, crash.expect, `${crash.kind} interrupted at ${crash.step} should end ${crash.expect}, is ${machine.state}`)
      if (crash.kind === 'update') assert.notEqual(machine.instance_id, versionBefore, 'the update was finished, with its new version')
      const facts = await guestFacts(p, machineId)
      const running = machine.state === 'started' || machine.state === 'suspended'
      assert.equal(facts.guest, running, `guest present iff running (${JSON.stringify(facts)})`)
      assert.equal(facts.netns, running, `network namespace present iff running (${JSON.stringify(facts)})`)
      assert.equal(facts.mounted, running, `rootfs mounted iff running (${JSON.stringify(facts)})`)
      if (machine.state === 'destroyed') assert.equal(facts.dir, false, 'a destroyed Machine leaves no files')
      if (machine.state === 'started') {
        const exec = await (await post(p, `/v1/apps/crash/machines/${machineId}/exec`, { command: ['true'] })).json() as { exit_code: number }
        assert.equal(exec.exit_code, 0, 'the guest is alive and reachable')
      }
      if (machine.state !== 'destroyed') assert.equal((await p.fetch(`/v1/apps/crash/machines/${machineId}?force=true`, { method: 'DELETE' })).status, 200)
    })
  }
})
