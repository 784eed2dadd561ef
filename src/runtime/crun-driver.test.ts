import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, mkdirSync, rmSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { randomBytes } from 'node:crypto'
import { CrunDriver } from './crun-driver.js'
import { GUEST_INIT_PATH } from './oci-spec.js'
import { readCpuUsageUs, readMemoryLimitBytes } from './cgroups.js'
import type { GuestSpec } from './driver.js'
import { ensureBridge, removeBridge, setupMachineNetwork, teardownMachineNetwork } from '../network/index.js'
import { makeBusyboxRootfs } from '../../test/kit/rootfs.js'

// The crun driver against real crun, conmon and tini, in a real network namespace.

const waitFor = async <T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000): Promise<T> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

test('crun driver: guests run isolated with limits, report exits and OOM kills, pause and exec', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-crun-'))
  const suffix = randomBytes(3).toString('hex')
  const bridge = `hgt${suffix}`
  const rootfs = makeBusyboxRootfs(join(dir, 'rootfs'))
  const driver = await CrunDriver.create({ stateDir: join(dir, 'state'), cgroupParent: `hangar-test-${suffix}` })
  const ids: string[] = []
  t.after(async () => {
    for (const id of ids) { await driver.remove(id); await teardownMachineNetwork(id) }
    await driver.close()
    await removeBridge(bridge)
    rmSync(dir, { recursive: true, force: true })
  })
  await ensureBridge({ name: bridge, gatewayCidr: '10.251.0.1/24' })

  let ordinal = 1
  const guest = async (args: string[], extra: Partial<GuestSpec> = {}): Promise<GuestSpec> => {
    const machineId = randomBytes(7).toString('hex')
    ids.push(machineId)
    ordinal++
    const netnsPath = await setupMachineNetwork({ machineId, bridge, ipv4: `10.251.0.${ordinal}`, ipv4Prefix: 24, gatewayIpv4: '10.251.0.1', sixpn: `fdaa:0:1:0:9:0:${ordinal}:2` })
    const logDir = join(dir, machineId)
    mkdirSync(logDir)
    return { machineId, rootfs, args, env: { PATH: '/bin', GREETING: 'hello' }, cwd: '/', user: { uid: 0, gid: 0 }, hostname: machineId, netnsPath, memoryMb: 64, cpus: 1, cpuKind: 'shared', logPath: join(logDir, 'ctr.log'), logMaxBytes: 1 << 20, ...extra }
  }

  await t.test('a guest sees its own hostname, env, memory limit and network; its exit code is recorded', async () => {
    const spec = await guest(['/bin/sh', '-c', 'hostname; echo "$GREETING"; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; ip -4 addr show eth0 | grep -o "inet [0-9.]*"; echo $$; exit 7'])
    const exited = new Promise<string>((resolve) => { const off = driver.onExit((id) => { if (id === spec.machineId) { off(); resolve(id) } }) })
    const { pid } = await driver.launch(spec)
    assert.ok(pid > 1)
    await exited
    const exit = await driver.exitStatus(spec.machineId)
    assert.equal(exit?.exitCode, 7)
    assert.equal(exit?.oomKilled, false)
    const log = readFileSync(spec.logPath, 'utf8')
    assert.match(log, new RegExp(`stdout F ${spec.machineId}\\n`))
    assert.match(log, /stdout F hello\n/)
    assert.match(log, /stdout F 67108864\n/)
    assert.match(log, /inet 10\.251\.0\.\d+/)
    assert.match(log, /stdout F 2\n/, 'the main process runs under tini (PID 1), as PID 2')
  })

  await t.test('a memory hog is OOM-killed at the limit and the exit says so', async () => {
    const spec = await guest(['/bin/sh', '-c', 'a=$(head -c 200000000 /dev/zero | tr "\\0" x); echo survived'])
    await driver.launch(spec)
    const exit = await waitFor('the OOM kill', () => driver.exitStatus(spec.machineId))
    assert.equal(exit.oomKilled, true)
    assert.equal(exit.exitCode, 137)
    assert.doesNotMatch(readFileSync(spec.logPath, 'utf8'), /survived/)
  })

  await t.test('a cpu burner with 1 cpu gets at most one core', async () => {
    const spec = await guest(['/bin/sh', '-c', '(while :; do :; done) & (while :; do :; done) & wait'])
    await driver.launch(spec)
    const cgroup = driver.cgroupsPathFor(spec.machineId)
    const before = readCpuUsageUs(driver.cgroupInfo, cgroup)
    const started = process.hrtime.bigint()
    await new Promise((r) => setTimeout(r, 1500))
    const usedUs = readCpuUsageUs(driver.cgroupInfo, cgroup) - before
    const wallUs = Number(process.hrtime.bigint() - started) / 1000
    const cores = usedUs / wallUs
    assert.ok(cores < 1.15, `used ${cores.toFixed(2)} cores with a 1-cpu limit`)
    // Only the cap is asserted: on a busy 2-core machine the burner may get much less than its core.
    assert.ok(cores > 0.02, `the burner did not run (${cores.toFixed(2)} cores)`)
    assert.equal(readMemoryLimitBytes(driver.cgroupInfo, cgroup), 64 * 1024 * 1024)
    await driver.kill(spec.machineId, 'SIGKILL')
    const exit = await waitFor('the kill', () => driver.exitStatus(spec.machineId))
    assert.equal(exit.signal, 9)
  })

  await t.test('pause freezes and resume thaws a guest that keeps its memory; exec and ps work', async () => {
    const spec = await guest(['/bin/sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done'])
    await driver.launch(spec)
    assert.equal(await driver.status(spec.machineId), 'running')
    const read = async () => Number((await driver.exec(spec.machineId, ['cat', '/tmp/counter'], { timeoutMs: 5000 })).stdout.trim())
    const first = await waitFor('the counter', async () => (await read()) > 0 ? read() : undefined)
    await driver.pause(spec.machineId)
    assert.equal(await driver.status(spec.machineId), 'paused')
    const frozenAt = Number(readFileSync(join(rootfs, 'tmp/counter'), 'utf8'))
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(Number(readFileSync(join(rootfs, 'tmp/counter'), 'utf8')), frozenAt, 'a paused guest does not run')
    await driver.resume(spec.machineId)
    const after = await waitFor('the counter to move on', async () => { const v = await read(); return v > frozenAt ? v : undefined })
    assert.ok(after > first, 'the loop kept its state across the freeze')
    const exec = await driver.exec(spec.machineId, ['sh', '-c', 'echo out; echo err >&2; exit 3'], { timeoutMs: 5000 })
    assert.deepEqual(exec, { exit_code: 3, exit_signal: 0, stdout: 'out\n', stderr: 'err\n' })
    const processes = await driver.processes(spec.machineId)
    assert.ok(processes.some((p) => p.command.includes(GUEST_INIT_PATH)))
    assert.ok(processes.some((p) => p.command.includes('/bin/sh -c i=0')))
    await driver.remove(spec.machineId)
    assert.equal(await driver.status(spec.machineId), 'absent')
  })
})
