import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CatalogClient, CrrStore, type Changeset } from '../../src/catalog/index.js'
import { health, members, startCatalogCluster, type CatalogCluster } from '../../test/kit/catalog-cluster.js'

// Catalog benchmark (issue 4): real node processes on loopback.
//   - time until a write is visible on every node (through a subscription on each node), p50/p99
//   - changes applied per second per node (a burst of large transactions)
//   - bytes sent per change (UDP broadcast, and broadcast + sync), and SWIM's own traffic
// Usage: node dist/bench/catalog/run.js [sizes, default 3,10,30] [writes per size, default 200]

interface SizeResult {
  nodes: number
  writes: number
  p50: number
  p99: number
  max: number
  appliedPerSecond: number
  burstChanges: number
  burstMs: number
  broadcastBytesPerChange: number
  totalBytesPerChange: number
  swimBytesPerNodePerSecond: number
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

async function totals(cluster: CatalogCluster): Promise<Record<string, number>> {
  const all = await Promise.all(cluster.nodes.map((n) => health(n.apiUrl)))
  const sum: Record<string, number> = {}
  for (const h of all) for (const [k, v] of Object.entries(h.stats)) sum[k] = (sum[k] ?? 0) + v
  return sum
}

async function waitUntil(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function measure(size: number, writes: number): Promise<SizeResult> {
  process.stderr.write(`\n[catalog bench] starting ${size} nodes…\n`)
  const cluster = await startCatalogCluster(size, { logLevel: 'warn' })
  const clients: CatalogClient[] = []
  try {
    await waitUntil(async () => {
      const views = await Promise.all(cluster.nodes.map((n) => members(n.apiUrl)))
      return views.every((v) => v.filter((m) => m.state === 'alive').length === size - 1)
    }, 60_000, 'every node to see every other alive')
    // RTTs are measured by SWIM pings; give every node a moment to have them all.
    await waitUntil(async () => {
      const views = await Promise.all(cluster.nodes.map((n) => members(n.apiUrl)))
      return views.every((v) => v.every((m) => m.rtt_ms !== null))
    }, 30_000, 'RTTs to every member')
    // Steady state, not start-up: let the boot-time CPU storm pass and RTT samples accumulate.
    await new Promise((resolve) => setTimeout(resolve, 3000))
    await new CatalogClient(cluster.nodes[0]!.apiUrl).execute("INSERT INTO kv (k, v) VALUES ('probe', 'start')")

    // One subscription per node; arrival times per written value.
    const arrivals = new Map<string, number[]>()
    for (const node of cluster.nodes) {
      const client = new CatalogClient(node.apiUrl)
      clients.push(client)
      const subscription = client.subscribe("SELECT k, v FROM kv WHERE k = 'probe'", {
        onChange: (change) => {
          const value = String(change.values[1])
          let list = arrivals.get(value)
          if (!list) { list = []; arrivals.set(value, list) }
          list.push(performance.now())
        },
      })
      await subscription.ready
    }
    const writers = cluster.nodes.map((n) => new CatalogClient(n.apiUrl))
    clients.push(...writers)
    const before = await totals(cluster)
    const startedAt = performance.now()
    const latencies: number[] = []
    for (let i = 0; i < writes; i++) {
      const value = `w${i}`
      const writer = writers[Math.floor(Math.random() * writers.length)]!
      const t0 = performance.now()
      await writer.execute("UPDATE kv SET v = ? WHERE k = 'probe'", [value])
      await waitUntil(() => (arrivals.get(value)?.length ?? 0) >= size, 10_000, `write ${i} on all nodes`)
      latencies.push(Math.max(...arrivals.get(value)!) - t0)
    }
    const elapsedSec = (performance.now() - startedAt) / 1000
    const after = await totals(cluster)
    const changesWritten = writes // one column change per write
    const broadcastBytes = after.broadcastBytes! - before.broadcastBytes!
    const syncBytes = (after.syncBytesSent! - before.syncBytesSent!)
    const swimBytes = after.swimBytes! - before.swimBytes!
    latencies.sort((a, b) => a - b)

    // Burst: large transactions from one node; time until every node applied all of them.
    const burstTransactions = 50
    const rowsPerTransaction = 100
    const applyBefore = await Promise.all(cluster.nodes.map((n) => health(n.apiUrl).then((h) => h.stats.changesApplied!)))
    const burstStart = performance.now()
    const origin = writers[0]!
    for (let t = 0; t < burstTransactions; t++) {
      const values = Array.from({ length: rowsPerTransaction }, (_, r) => `('burst-${t}-${r}', 'value-${t}-${r}', ${r})`).join(', ')
      await origin.execute(`INSERT INTO kv (k, v, n) VALUES ${values}`)
    }
    // Each row: the existence record plus v, n and note.
    const burstChanges = burstTransactions * rowsPerTransaction * 4
    const doneAt: number[] = []
    await waitUntil(async () => {
      const stats = await Promise.all(cluster.nodes.slice(1).map((n) => health(n.apiUrl).then((h) => h.stats.changesApplied!)))
      stats.forEach((applied, i) => {
        if (doneAt[i] === undefined && applied - applyBefore[i + 1]! >= burstChanges) doneAt[i] = performance.now()
      })
      return doneAt.filter((t) => t !== undefined).length === size - 1
    }, 120_000, 'the burst to be applied everywhere')
    const burstMs = Math.max(...doneAt) - burstStart
    if (process.env.CATALOG_BENCH_VERBOSE) {
      const t = await totals(cluster)
      process.stderr.write(`[catalog bench] ${size} nodes after burst: ${JSON.stringify(t)}\n`)
      process.stderr.write(`[catalog bench] per-node burst completion (ms): ${doneAt.map((d) => Math.round(d - burstStart)).join(' ')}\n`)
    }
    const appliedPerSecond = burstChanges / (burstMs / 1000)
    return {
      nodes: size,
      writes,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: latencies[latencies.length - 1]!,
      appliedPerSecond,
      burstChanges,
      burstMs,
      broadcastBytesPerChange: broadcastBytes / changesWritten,
      totalBytesPerChange: (broadcastBytes + syncBytes) / changesWritten,
      swimBytesPerNodePerSecond: swimBytes / size / elapsedSec,
    }
  } finally {
    await Promise.all(clients.map((c) => c.close()))
    await cluster.close()
  }
}

/** The store's merge rate alone: one process, a WAL database on disk, no network. */
function storeMergeRate(): { insertsPerSecond: number; updatesPerSecond: number } {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-catalog-bench-'))
  try {
    const schema = 'CREATE TABLE kv (k TEXT NOT NULL PRIMARY KEY, v, n INTEGER NOT NULL DEFAULT 0, note TEXT);'
    const rates: Array<[number, number]> = []
    for (let run = 0; run < 3; run++) {
      const origin = new CrrStore({ path: join(dir, `origin-${run}.db`) })
      const target = new CrrStore({ path: join(dir, `target-${run}.db`) })
      origin.applySchema(schema)
      target.applySchema(schema)
      const inserts: Changeset[] = []
      for (let t = 0; t < 50; t++) {
        const values = Array.from({ length: 100 }, (_, r) => `('burst-${t}-${r}', 'value-${t}-${r}', ${r})`).join(', ')
        inserts.push(origin.transact([{ sql: `INSERT INTO kv (k, v, n) VALUES ${values}` }]).changeset!)
      }
      const updates: Changeset[] = []
      for (let t = 0; t < 50; t++) updates.push(origin.transact([{ sql: `UPDATE kv SET v = v || '+', n = n + 1 WHERE k LIKE 'burst-${t}-%'` }]).changeset!)
      const count = (list: Changeset[]) => list.reduce((n, c) => n + c.changes.length, 0)
      let t0 = performance.now()
      target.applyChangesets(inserts)
      const insertRate = count(inserts) / ((performance.now() - t0) / 1000)
      t0 = performance.now()
      target.applyChangesets(updates)
      rates.push([insertRate, count(updates) / ((performance.now() - t0) / 1000)])
      origin.close()
      target.close()
    }
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
    return { insertsPerSecond: median(rates.map((r) => r[0])), updatesPerSecond: median(rates.map((r) => r[1])) }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function main(): Promise<void> {
  const sizes = (process.argv[2] ?? '3,10,30').split(',').map(Number)
  const writes = Number(process.argv[3] ?? 200)
  const merge = storeMergeRate()
  const results: SizeResult[] = []
  for (const size of sizes) results.push(await measure(size, writes))
  const fmt = (n: number, digits = 1) => n.toFixed(digits)
  const lines = [
    '',
    '| nodes | writes | visible on all nodes p50 | p99 | max | changes applied/s per node (burst) | broadcast bytes/change | broadcast+sync bytes/change | SWIM bytes/s per node |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...results.map((r) => `| ${r.nodes} | ${r.writes} | ${fmt(r.p50)} ms | ${fmt(r.p99)} ms | ${fmt(r.max)} ms | ${fmt(r.appliedPerSecond, 0)} (${r.burstChanges} changes in ${fmt(r.burstMs, 0)} ms) | ${fmt(r.broadcastBytesPerChange, 0)} | ${fmt(r.totalBytesPerChange, 0)} | ${fmt(r.swimBytesPerNodePerSecond, 0)} |`),
    '',
    `Store merge rate (one process, WAL on disk, no network): ${fmt(merge.insertsPerSecond, 0)} changes/s for new rows, ${fmt(merge.updatesPerSecond, 0)} changes/s for column updates.`,
    'Burst: 50 transactions of 100 rows (20 000 changes) written on one node, timed until every other node applied all of them; all nodes share this machine\'s cores.',
    'Visibility: a one-column UPDATE through POST /v1/transactions on a random node, timed until a subscription on every node has delivered it.',
    'Bytes: UDP broadcast datagrams (and sync request/answer bodies) summed over all nodes, divided by the changes written; SWIM is membership traffic.',
  ]
  process.stdout.write(lines.join('\n') + '\n')
}

main().catch((err) => {
  process.stderr.write(`catalog bench failed: ${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
