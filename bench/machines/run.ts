import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import http from 'node:http'
import { runCommand } from '../../src/core/command.js'
import { buildOciConfig } from '../../src/runtime/index.js'
import { startRegistry } from '../../test/kit/registry.js'
import { pushBusyboxImage } from '../../test/kit/images.js'
import { startPlatform, type Platform } from '../../test/kit/platform.js'
import type { Machine } from '../../src/core/index.js'

// bench/machines: Machine lifecycle latency and throughput through the whole stack (HTTP API →
// NATS → agent → crun under conmon, overlay rootfs, network namespace), beside plain `crun run`
// of an equivalent bundle (same rootfs, namespaces and limits) measured in the same run.
// Usage: npm run bench:machines [-- --latency-samples 100 --burst 200 --concurrency 16]

const args = process.argv.slice(2)
const option = (name: string, fallback: number) => { const i = args.indexOf(`--${name}`); return i >= 0 ? Number(args[i + 1]) : fallback }
const SAMPLES = option('latency-samples', 100)
const BURST = option('burst', 200)
const CONCURRENCY = option('concurrency', 16)

const quantile = (values: number[], q: number) => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! }
const ms = (start: bigint) => Number(process.hrtime.bigint() - start) / 1e6
const fmt = (n: number, unit = 'ms') => `${n < 10 ? n.toFixed(2) : n.toFixed(1)} ${unit}`

async function pool<T>(count: number, concurrency: number, work: (i: number) => Promise<T>): Promise<T[]> {
  const results: T[] = new Array(count)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) { const i = next++; results[i] = await work(i) }
  }))
  return results
}

/** CPU ticks (user + system, own + reaped children) of every process now, by pid, with its name. */
function cpuByProcess(): Map<number, { name: string; ticks: number; born: string }> {
  const byPid = new Map<number, { name: string; ticks: number; born: string }>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      // Kernel workers rename themselves after the work they do: the name is a label, not an identity.
      byPid.set(Number(entry), { name: name.replace(/^(kworker)\/.*?-/, '$1 '), ticks: Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]), born: fields[19]! })
    } catch { /* exited */ }
  }
  return byPid
}

/** CPU time (user + nice + system + irq + softirq) of the whole machine so far, ms. */
function machineCpuMs(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number)
  return (fields[0]! + fields[1]! + fields[2]! + fields[5]! + fields[6]!) * 10
}

/** Where the CPU of a stretch went, per process name (ms), from two snapshots; processes born in
 * between count whole; the ones that came and went count in whoever reaped them. */
function cpuSpent(before: ReturnType<typeof cpuByProcess>, after: ReturnType<typeof cpuByProcess>, label: (pid: number, name: string) => string): Map<string, number> {
  const spent = new Map<string, number>()
  for (const [pid, now] of after) {
    const ticks = now.ticks - (before.get(pid)?.born === now.born ? before.get(pid)!.ticks : 0)
    if (ticks <= 0) continue
    const key = label(pid, now.name)
    spent.set(key, (spent.get(key) ?? 0) + ticks * 10)
  }
  return spent
}

function rssKiB(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return match ? Number(match[1]) : 0
}

/** Plain crun: the same busybox rootfs and an equivalent OCI config, run detached. */
async function crunBaseline(dir: string) {
  const rootfs = join(dir, 'rootfs')
  mkdirSync(join(rootfs, 'bin'), { recursive: true })
  for (const sub of ['proc', 'sys', 'dev', 'etc', 'tmp']) mkdirSync(join(rootfs, sub), { recursive: true })
  await runCommand('cp', ['/usr/bin/busybox', join(rootfs, 'bin/busybox')])
  for (const applet of ['sh', 'sleep']) await runCommand('ln', ['-sf', 'busybox', join(rootfs, 'bin', applet)])
  const crunRoot = join(dir, 'crun-root')
  const suffix = randomBytes(3).toString('hex')
  const bundle = (id: string) => {
    const bundleDir = join(dir, 'bundles', id)
    mkdirSync(bundleDir, { recursive: true })
    const config = buildOciConfig({
      machineId: id, rootfs, args: ['/bin/sleep', '3600'], env: { PATH: '/bin' }, cwd: '/', user: { uid: 0, gid: 0 },
      hostname: id, netnsPath: '', memoryMb: 256, cpus: 1, cpuKind: 'shared', logPath: '', logMaxBytes: 0,
    }, { initPath: '/usr/bin/tini-static', cgroupsPath: `/hangar-bench-${suffix}/${id}`, openFiles: 1024 }) as { linux: { namespaces: Array<{ type: string; path?: string }> } }
    // A fresh network namespace (crun makes it) instead of joining a prepared one.
    config.linux.namespaces = config.linux.namespaces.map((n) => (n.type === 'network' ? { type: 'network' } : n))
    writeFileSync(join(bundleDir, 'config.json'), JSON.stringify(config))
    return bundleDir
  }
  const ids: string[] = []
  // The detached guest keeps whatever stdio it is given: hand it none, so crun's exit is the end.
  const run = async (id: string) => {
    ids.push(id)
    const path = bundle(id)
    await new Promise<void>((resolve, reject) => {
      const child = spawn('crun', ['--root', crunRoot, 'run', '--detach', '--bundle', path, id], { stdio: 'ignore' })
      child.once('error', reject)
      child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`crun run exited ${code}`))))
    })
  }
  const stop = async (id: string) => {
    await runCommand('crun', ['--root', crunRoot, 'kill', id, 'KILL'], { allowFailure: true })
    for (let i = 0; i < 500; i++) {
      const state = await runCommand('crun', ['--root', crunRoot, 'state', id], { allowFailure: true })
      if (state.code !== 0 || JSON.parse(state.stdout).status === 'stopped') break
      await new Promise((r) => setTimeout(r, 2))
    }
    await runCommand('crun', ['--root', crunRoot, 'delete', '-f', id], { allowFailure: true })
  }
  const createLatency: number[] = []
  for (let i = 0; i < SAMPLES; i++) { const t = process.hrtime.bigint(); await run(`c${i}`); createLatency.push(ms(t)) }
  const stopLatency: number[] = []
  for (let i = 0; i < SAMPLES; i++) { const t = process.hrtime.bigint(); await stop(`c${i}`); stopLatency.push(ms(t)) }
  const burstStart = process.hrtime.bigint()
  await pool(BURST, CONCURRENCY, (i) => run(`b${i}`))
  const burstSeconds = ms(burstStart) / 1000
  await pool(BURST, CONCURRENCY, (i) => stop(`b${i}`))
  for (const id of ids) await runCommand('crun', ['--root', crunRoot, 'delete', '-f', id], { allowFailure: true })
  for (const controller of ['cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'blkio', 'pids', 'systemd', 'unified', 'hugetlb', 'net_cls', 'perf_event']) {
    await runCommand('rmdir', [`/sys/fs/cgroup/${controller}/hangar-bench-${suffix}`], { allowFailure: true })
  }
  return { createLatency, stopLatency, startLatency: createLatency, createsPerSecond: BURST / burstSeconds }
}

/** The load generator's HTTP client: node:http over kept-alive connections. It shares the two
 * cores with everything it measures, so it is the lightest one Node has (global fetch spent
 * ~0.4 ms of CPU per request on web streams). */
function lightClient(apiUrl: string, token: string) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })
  const url = new URL(apiUrl)
  return (method: string, path: string, body?: unknown) => new Promise<{ status: number; text: string }>((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = http.request({
      agent, host: url.hostname, port: url.port, method, path,
      headers: { authorization: `Bearer ${token}`, ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }) },
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(payload)
  })
}

async function hangar(platform: Platform, image: string) {
  const request = lightClient(platform.apiUrl, platform.token)
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await request(method, path, body)
    if (res.status < 200 || res.status > 299) throw new Error(`${method} ${path}: ${res.status} ${res.text}`)
    return res.text ? JSON.parse(res.text) : undefined
  }
  const post = (path: string, body?: unknown) => call('POST', path, body)
  await post('/v1/apps', { app_name: 'bench', org_slug: 'personal' })
  const config = { image, init: { cmd: ['sleep', '3600'] }, restart: { policy: 'no' } }
  // Warm the image cache (the benchmark measures created→started with the image cached).
  const warm = await post('/v1/apps/bench/machines', { config }) as Machine
  await call('DELETE', `/v1/apps/bench/machines/${warm.id}?force=true`)

  const createLatency: number[] = []
  const ids: string[] = []
  for (let i = 0; i < SAMPLES; i++) {
    const t = process.hrtime.bigint()
    const machine = await post('/v1/apps/bench/machines', { config }) as Machine
    createLatency.push(ms(t))
    if (machine.state !== 'started') throw new Error(`machine ${machine.id} is ${machine.state}`)
    ids.push(machine.id)
  }
  const stopLatency: number[] = []
  for (const id of ids) { const t = process.hrtime.bigint(); await post(`/v1/apps/bench/machines/${id}/stop`); stopLatency.push(ms(t)) }
  const startLatency: number[] = []
  for (const id of ids) { const t = process.hrtime.bigint(); await post(`/v1/apps/bench/machines/${id}/start`); startLatency.push(ms(t)) }
  await pool(ids.length, CONCURRENCY, (i) => call('DELETE', `/v1/apps/bench/machines/${ids[i]}?force=true`))

  const agentPid = platform.agentPid()!
  const rssBefore = rssKiB(agentPid)
  const cpuBefore = cpuByProcess()
  const machineCpuBefore = machineCpuMs()
  const burstStart = process.hrtime.bigint()
  const burst = await pool(BURST, CONCURRENCY, () => post('/v1/apps/bench/machines', { config }) as Promise<Machine>)
  const burstSeconds = ms(burstStart) / 1000
  // For `perf record -k CLOCK_MONOTONIC` + `perf report --time START,END`: the burst's window.
  if (process.env.HANGAR_BENCH_MARK_BURST) process.stderr.write(`burst window (CLOCK_MONOTONIC s): ${(Number(burstStart) / 1e9).toFixed(6)},${(Number(process.hrtime.bigint()) / 1e9).toFixed(6)}\n`)
  const label = (pid: number, name: string) => (pid === process.pid ? 'API + bench client' : pid === agentPid ? 'agent' : name)
  const spent = cpuSpent(cpuBefore, cpuByProcess(), label)
  // Processes that lived under a clock tick each (conmon, crun create, …) round to nothing in
  // /proc/<pid>/stat: the machine-wide counter has them.
  const attributed = [...spent.values()].reduce((sum, v) => sum + v, 0)
  spent.set('short-lived processes, unattributed', Math.max(0, machineCpuMs() - machineCpuBefore - attributed))
  const cpuPerCreate = [...spent].map(([name, spentMs]) => [name, spentMs / BURST] as const).sort((a, b) => b[1] - a[1])
  await new Promise((r) => setTimeout(r, 1000))
  const rssAfter = rssKiB(agentPid)
  const conmonPids = (await runCommand('pgrep', ['-x', 'conmon'], { allowFailure: true })).stdout.split('\n').filter(Boolean).map(Number)
  const conmonKiB = conmonPids.reduce((sum, pid) => { try { return sum + rssKiB(pid) } catch { return sum } }, 0) / Math.max(conmonPids.length, 1)
  await pool(burst.length, CONCURRENCY, (i) => call('DELETE', `/v1/apps/bench/machines/${burst[i]!.id}?force=true`))
  return { createLatency, stopLatency, startLatency, createsPerSecond: BURST / burstSeconds, agentKiBPerMachine: (rssAfter - rssBefore) / BURST, agentRssKiB: rssAfter, conmonKiB, cpuPerCreate }
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-bench-machines-'))
  const registry = await startRegistry()
  let platform: Platform | undefined
  try {
    await pushBusyboxImage(registry, 'busybox:v1')
    platform = await startPlatform({ region: 'bch', hostArgs: ['--cpus', '100000', '--memory-mb', '100000000'] })
    process.stderr.write(`bench/machines: ${SAMPLES} sequential samples, bursts of ${BURST} at concurrency ${CONCURRENCY}\n`)
    const ours = await hangar(platform, `${registry.host}/busybox:v1`)
    const base = await crunBaseline(dir)
    const row = (metric: string, hangarValue: number, baseValue: number | undefined, target: string, unit = 'ms') =>
      `| ${metric} | ${fmt(hangarValue, unit)} | ${baseValue === undefined ? '—' : fmt(baseValue, unit)} | ${baseValue ? (hangarValue / baseValue).toFixed(2) + '×' : '—'} | ${target} |`
    const lines = [
      '| metric | Hangar (API → agent → crun+conmon) | plain `crun run` | ratio | target |',
      '|---|---|---|---|---|',
      row('create → started, p50 (image cached)', quantile(ours.createLatency, 0.5), quantile(base.createLatency, 0.5), '< 150 ms'),
      row('create → started, p99', quantile(ours.createLatency, 0.99), quantile(base.createLatency, 0.99), ''),
      row('stopped → started, p50', quantile(ours.startLatency, 0.5), quantile(base.startLatency, 0.5), '< 50 ms'),
      row('stopped → started, p99', quantile(ours.startLatency, 0.99), quantile(base.startLatency, 0.99), ''),
      row('stop, p50', quantile(ours.stopLatency, 0.5), quantile(base.stopLatency, 0.5), ''),
      row('stop, p99', quantile(ours.stopLatency, 0.99), quantile(base.stopLatency, 0.99), ''),
      row(`sustained creates/s (${BURST} Machines, ${CONCURRENCY} at a time)`, ours.createsPerSecond, base.createsPerSecond, '≥ 150 /s', '/s'),
      row(`agent memory per running Machine (${BURST} running)`, ours.agentKiBPerMachine / 1024, undefined, '< 5 MiB', 'MiB'),
      row('conmon (monitor) memory per running Machine', ours.conmonKiB / 1024, undefined, '', 'MiB'),
    ]
    process.stdout.write(lines.join('\n') + '\n')
    const cpuTotal = ours.cpuPerCreate.reduce((sum, [, spent]) => sum + spent, 0)
    process.stdout.write(`\nCPU per create during the burst (all processes, ms): ${cpuTotal.toFixed(1)} = ${ours.cpuPerCreate.filter(([, spent]) => spent >= 0.1).map(([name, spent]) => `${name} ${spent.toFixed(1)}`).join(', ')}\n`)
    process.stdout.write(`\nagent RSS with ${BURST} Machines running: ${(ours.agentRssKiB / 1024).toFixed(1)} MiB. Baseline: \`crun run --detach\` of the same busybox rootfs with the same namespaces and cgroup limits (its stop = crun kill + wait + delete; its start = a fresh run).\n`)
  } finally {
    await platform?.close()
    await registry.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((err) => { process.stderr.write(`bench/machines failed: ${err instanceof Error ? err.stack : err}\n`); process.exit(1) })
