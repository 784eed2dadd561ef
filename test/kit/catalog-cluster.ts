import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

// Multi-process catalog clusters for tests and the benchmark: each node is a real
// `process-main.js` process (the same code as `hangar catalog`), optionally inside a network
// namespace. Processes die with the test process (setpriv --pdeathsig) and `close()` removes
// every process and file, also when a test fails.

export const CATALOG_MAIN = fileURLToPath(new URL('../../src/catalog/process-main.js', import.meta.url))

export interface CatalogNodeProcess {
  readonly name: string
  readonly dbPath: string
  apiUrl: string
  gossipAddr: string
  siteId: string
  child: ChildProcess
  /** Arguments it was started with, for restarts. */
  readonly args: StartNodeOptions
  running: boolean
}

export interface StartNodeOptions {
  dir: string
  name: string
  bootstrap?: string[]
  gossipAddr?: string
  apiAddr?: string
  /** Run inside this network namespace. */
  netns?: string
  schemaPath?: string
  hostId?: string
  region?: string
  extraArgs?: string[]
  /** Log level for the node's stderr log file. */
  logLevel?: string
}

export async function startNodeProcess(options: StartNodeOptions): Promise<CatalogNodeProcess> {
  const dbPath = join(options.dir, `${options.name}.db`)
  const args = [
    CATALOG_MAIN,
    '--db', dbPath,
    '--gossip-addr', options.gossipAddr ?? '127.0.0.1:0',
    '--api-addr', options.apiAddr ?? '127.0.0.1:0',
    ...(options.bootstrap && options.bootstrap.length > 0 ? ['--bootstrap', options.bootstrap.join(',')] : []),
    ...(options.schemaPath ? ['--schema', options.schemaPath] : []),
    ...(options.hostId ? ['--host-id', options.hostId] : []),
    ...(options.region ? ['--region', options.region] : []),
    ...(options.extraArgs ?? []),
  ]
  const command = options.netns ? ['ip', 'netns', 'exec', options.netns, process.execPath, ...args] : [process.execPath, ...args]
  const child = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', ...command], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, HANGAR_LOG_LEVEL: options.logLevel ?? 'info' },
  })
  const log = createWriteStream(join(options.dir, `${options.name}.log`), { flags: 'a' })
  child.stderr!.pipe(log)
  const readyTimeoutMs = 60_000
  const ready = await new Promise<{ site_id: string; api_url: string; gossip_addr: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`catalog node ${options.name} not ready within ${readyTimeoutMs / 1000} s (log: ${join(options.dir, options.name + '.log')})`)), readyTimeoutMs)
    const lines = createInterface({ input: child.stdout! })
    lines.once('line', (line) => {
      clearTimeout(timer)
      try { resolve(JSON.parse(line)) } catch { reject(new Error(`catalog node ${options.name}: unexpected first line ${line}`)) }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`catalog node ${options.name} exited (${code ?? signal}) before it was ready; log: ${join(options.dir, options.name + '.log')}`))
    })
  }).catch(async (err: unknown) => {
    // Never leave a half-started process behind.
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGKILL')
      await exited
    }
    throw err
  })
  const node: CatalogNodeProcess = { name: options.name, dbPath, apiUrl: ready.api_url, gossipAddr: ready.gossip_addr, siteId: ready.site_id, child, args: options, running: true }
  child.once('exit', () => { node.running = false })
  return node
}

/** Stops a node: SIGKILL (a crash) or SIGTERM (a clean leave). Resolves when it has exited. */
export async function stopNode(node: CatalogNodeProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!node.running || node.child.exitCode !== null) { node.running = false; return }
  const exited = new Promise<void>((resolve) => node.child.once('exit', () => resolve()))
  node.child.kill(signal)
  const timer = setTimeout(() => node.child.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(timer)
  node.running = false
}

/** Starts a stopped node again with its database and, unless told otherwise, its addresses. */
export async function restartNode(node: CatalogNodeProcess, overrides: Partial<StartNodeOptions> = {}): Promise<CatalogNodeProcess> {
  const apiPort = new URL(node.apiUrl).port
  const apiHost = new URL(node.apiUrl).hostname
  return startNodeProcess({ ...node.args, gossipAddr: node.gossipAddr, apiAddr: `${apiHost}:${apiPort}`, ...overrides })
}

export interface CatalogCluster {
  readonly dir: string
  readonly schemaPath: string
  nodes: CatalogNodeProcess[]
  add(name: string, options?: Partial<StartNodeOptions>): Promise<CatalogNodeProcess>
  close(): Promise<void>
}

export const TEST_SCHEMA = `
CREATE TABLE kv (k TEXT NOT NULL PRIMARY KEY, v, n INTEGER NOT NULL DEFAULT 0, note TEXT);
CREATE TABLE pairs (a TEXT NOT NULL, b INTEGER NOT NULL, v, PRIMARY KEY (a, b));
`

/** N nodes on loopback, the first one the others' bootstrap. */
export async function startCatalogCluster(count: number, options: { names?: string[]; hostIds?: boolean; extraArgs?: string[]; logLevel?: string } = {}): Promise<CatalogCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-catalog-'))
  const schemaPath = join(dir, 'schema.sql')
  writeFileSync(schemaPath, TEST_SCHEMA)
  const nodes: CatalogNodeProcess[] = []
  const cluster: CatalogCluster = {
    dir,
    schemaPath,
    nodes,
    async add(name, extra = {}) {
      const node = await startNodeProcess({
        dir, name, schemaPath,
        bootstrap: nodes.length > 0 ? [nodes[0]!.gossipAddr] : [],
        ...(options.hostIds ? { hostId: `host-${name}` } : {}),
        ...(options.extraArgs ? { extraArgs: options.extraArgs } : {}),
        ...(options.logLevel ? { logLevel: options.logLevel } : {}),
        ...extra,
      })
      nodes.push(node)
      return node
    },
    async close() {
      await Promise.all(nodes.map((n) => stopNode(n, 'SIGKILL').catch(() => {})))
      if (!process.env.HANGAR_KEEP_TEST_DIRS) rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 })
    },
  }
  try {
    const names = options.names ?? Array.from({ length: count }, (_, i) => `n${i + 1}`)
    await cluster.add(names[0]!)
    // The rest start together, as a fleet does (eight at a time, so 30 processes booting on a
    // small machine do not starve each other past the ready timeout).
    for (let i = 1; i < names.length; i += 8) await Promise.all(names.slice(i, i + 8).map((name) => cluster.add(name)))
  } catch (err) {
    await cluster.close()
    throw err
  }
  return cluster
}

// ── HTTP helpers ─────────────────────────────────────────────────────────────────────────────

export async function transact(apiUrl: string, statements: unknown[]): Promise<{ version: number | null }> {
  const response = await fetch(`${apiUrl}/v1/transactions`, { method: 'POST', body: JSON.stringify(statements), headers: { 'content-type': 'application/json' } })
  const text = await response.text()
  if (response.status !== 200) throw new Error(`transaction on ${apiUrl} failed: ${response.status} ${text}`)
  return JSON.parse(text) as { version: number | null }
}

/** The raw NDJSON row lines of a query: exact text, so REAL 1.0 and INTEGER 1 differ. */
export async function queryLines(apiUrl: string, statement: unknown): Promise<string[]> {
  const response = await fetch(`${apiUrl}/v1/queries`, { method: 'POST', body: JSON.stringify(statement), headers: { 'content-type': 'application/json' } })
  const text = await response.text()
  if (response.status !== 200) throw new Error(`query on ${apiUrl} failed: ${response.status} ${text}`)
  return text.trim().split('\n').filter((l) => l.startsWith('{"row"'))
}

/** Every row of the test tables, in key order, as exact text. */
export async function dumpTables(apiUrl: string, tables: Array<[string, string]> = [['kv', 'k'], ['pairs', 'a, b']]): Promise<string> {
  const parts: string[] = []
  for (const [table, order] of tables) {
    // The NDJSON text keeps storage classes apart: REAL 1.0, INTEGER 1, TEXT "1", {"blob":…}.
    parts.push(`${table}:`, ...(await queryLines(apiUrl, `SELECT * FROM ${table} ORDER BY ${order}`)))
  }
  return parts.join('\n')
}

export async function members(apiUrl: string): Promise<Array<{ id: string; state: string; addr: string; host_id: string | null; rtt_ms: number | null }>> {
  const response = await fetch(`${apiUrl}/v1/members`)
  return await response.json() as Array<{ id: string; state: string; addr: string; host_id: string | null; rtt_ms: number | null }>
}

export async function health(apiUrl: string): Promise<Record<string, unknown> & { gaps: number; stats: Record<string, number> }> {
  const response = await fetch(`${apiUrl}/v1/health`)
  return await response.json() as Record<string, unknown> & { gaps: number; stats: Record<string, number> }
}

export async function waitFor<T>(probe: () => Promise<T | false | undefined | null> | T | false | undefined | null, options: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000)
  let lastError: unknown
  while (Date.now() < deadline) {
    try {
      const value = await probe()
      if (value !== false && value !== undefined && value !== null) return value
    } catch (err) {
      lastError = err
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 50))
  }
  throw new Error(`timed out waiting for ${options.what ?? 'a condition'}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`)
}

/** Waits until every running node's dump equals the others'; returns it. */
export async function waitForConvergence(nodes: CatalogNodeProcess[], timeoutMs = 15_000): Promise<string> {
  let last: string[] = []
  try {
    return await waitFor(async () => {
      last = await Promise.all(nodes.filter((n) => n.running).map((n) => dumpTables(n.apiUrl)))
      return last.every((d) => d === last[0]) ? last[0]! : false
    }, { timeoutMs, intervalMs: 100, what: 'convergence' })
  } catch (err) {
    throw new Error(`${(err as Error).message}; dumps:\n${last.map((d, i) => `--- ${nodes[i]?.name}\n${d}`).join('\n')}`)
  }
}
