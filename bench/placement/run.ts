import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, openSync, closeSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startApi } from '../../src/api/index.js'
import { Bus, SUBJECTS, startNatsServer } from '../../src/bus/index.js'
import { PlacementMarket } from '../../src/placement/index.js'
import { cleanupHost } from '../../src/host/index.js'
import { silentLogger, type Machine } from '../../src/core/index.js'
import { startRegistry } from '../../test/kit/registry.js'
import { pushBusyboxImage } from '../../test/kit/images.js'
import { CLI_MAIN, freePort } from '../../test/kit/platform.js'
import { randomSubnet } from '../../test/kit/agent-host.js'

// bench/placement: how long placing a Machine through the market takes with 3, 10 and 30 hosts
// answering (real agent processes on one NATS). Two figures per size: the market alone (offers
// gathered, ranked, one confirmed, the rest released) and a whole create through the API
// (skip_launch, so the guest's boot is not in it), beside the same create sent straight to one
// host without asking for offers — the baseline, measured in the same run.
// Usage: npm run bench:placement [-- --sizes 3,10,30 --samples 100]

const args = process.argv.slice(2)
const option = (name: string, fallback: string) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : fallback }
const SIZES = option('sizes', '3,10,30').split(',').map(Number)
const SAMPLES = Number(option('samples', '100'))

const quantile = (values: number[], q: number) => { const sorted = [...values].sort((a, b) => a - b); return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! }
const ms = (start: bigint) => Number(process.hrtime.bigint() - start) / 1e6

async function main() {
  const root = mkdtempSync(join(tmpdir(), 'hangar-bench-placement-'))
  const registry = await startRegistry()
  await pushBusyboxImage(registry, 'busybox:v1')
  const image = `${registry.host}/busybox:v1`
  const nats = await startNatsServer({ dataDir: join(root, 'nats'), port: await freePort() })
  const api = await startApi({ natsUrl: nats.url, dbPath: join(root, 'api.db'), region: 'bench', logger: silentLogger })
  api.store.createOrg('personal')
  const token = api.store.createStaticToken('personal', 'bench')
  const bus = await Bus.connect(nats.url, { name: 'bench' })
  const agents: Array<{ child: ChildProcess; dir: string }> = []
  const rows: string[] = []
  try {
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${api.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
      const text = await res.text()
      if (!res.ok) throw new Error(`${path}: ${res.status} ${text}`)
      return JSON.parse(text)
    }
    await post('/v1/apps', { app_name: 'placement', org_slug: 'personal' })
    const config = { image, guest: { cpus: 1, memory_mb: 256, cpu_kind: 'shared' } }
    for (const size of SIZES) {
      while (agents.length < size) {
        const dir = join(root, `host-${agents.length}`)
        const log = openSync(join(root, `host-${agents.length}.log`), 'a')
        const child = spawn(process.execPath, [CLI_MAIN, 'agent', '--data-dir', dir, '--region', 'bench', '--nats', nats.url, '--machine-subnet', randomSubnet(), '--cpus', '100000', '--memory-mb', '100000000'], { stdio: ['ignore', log, log], env: { ...process.env, HANGAR_SKIP_SETUP: '1' } })
        closeSync(log)
        agents.push({ child, dir })
      }
      const deadline = Date.now() + 120_000
      while (api.hosts.alive().length < size) {
        if (Date.now() > deadline) throw new Error(`only ${api.hosts.alive().length} of ${size} hosts came up`)
        await new Promise((r) => setTimeout(r, 100))
      }
      process.stderr.write(`bench/placement: ${size} hosts answering\n`)
      const market = new PlacementMarket(bus, () => size)
      const marketOnly: number[] = []
      for (let i = 0; i < SAMPLES; i++) {
        const t = process.hrtime.bigint()
        const placement = await market.place('bench', { cpus: 1, memoryMb: 256 })
        marketOnly.push(ms(t))
        bus.publish('hangar.placement.release', { hostId: placement.hostId, reservationIds: [placement.reservationId] })
      }
      const throughApi: number[] = []
      let lastHost = ''
      for (let i = 0; i < SAMPLES; i++) {
        const t = process.hrtime.bigint()
        const machine = await post('/v1/apps/placement/machines', { region: 'bench', skip_launch: true, config }) as Machine
        throughApi.push(ms(t))
        lastHost = machine.host_id!
      }
      // Baseline: the same create, straight to one host's agent over NATS, no offers asked for.
      const direct: number[] = []
      for (let i = 0; i < SAMPLES; i++) {
        const t = process.hrtime.bigint()
        await bus.call(SUBJECTS.agentRpc(lastHost), 'create', { app: 'placement', org: 'personal', network: 1, request: { skip_launch: true, config } }, 30_000)
        direct.push(ms(t))
      }
      const fmt = (v: number) => `${v.toFixed(1)} ms`
      // Leave the hosts empty for the next size (each host has a /24 of private addresses).
      const made = await (await fetch(`${api.url}/v1/apps/placement/machines`, { headers: { authorization: `Bearer ${token}` } })).json() as Machine[]
      for (const machine of made) await fetch(`${api.url}/v1/apps/placement/machines/${machine.id}?force=true`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } })
      rows.push(`| ${size} | ${fmt(quantile(marketOnly, 0.5))} | ${fmt(quantile(marketOnly, 0.99))} | ${fmt(quantile(throughApi, 0.5))} | ${fmt(quantile(throughApi, 0.99))} | ${fmt(quantile(direct, 0.5))} | ${(quantile(throughApi, 0.5) / quantile(direct, 0.5)).toFixed(2)}× |`)
    }
    process.stdout.write([
      `| hosts answering | market p50 | market p99 | create via API + market p50 | p99 | baseline: create straight to one host p50 | ratio (p50) |`,
      '|---|---|---|---|---|---|---|',
      ...rows,
    ].join('\n') + `\n\n${SAMPLES} sequential samples per size; creates use skip_launch (placement and recording, not the guest boot). Aim: placement under 50 ms p50.\n`)
  } finally {
    for (const { child } of agents) child.kill('SIGTERM')
    await Promise.all(agents.map(({ child }) => new Promise<void>((resolve) => { if (child.exitCode !== null) resolve(); else child.once('exit', () => resolve()) })))
    for (const { dir } of agents) if (existsSync(join(dir, 'agent.db'))) await cleanupHost(dir).catch(() => undefined)
    await bus.close()
    await api.close()
    await nats.stop()
    await registry.stop()
    rmSync(root, { recursive: true, force: true })
  }
}

main().catch((err) => { process.stderr.write(`bench/placement failed: ${err instanceof Error ? err.stack : err}\n`); process.exit(1) })
