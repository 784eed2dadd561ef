import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { silentLogger, type RouteChange } from '../core/index.js'
import { startCatalogNode } from './catalog-node.js'
import { CatalogClient } from './client.js'
import { CrrStore } from './crr-store.js'
import { configForCatalog, PLATFORM_SCHEMA_SQL, upsertApp, upsertHost, upsertMachine, type MachineRow } from './platform-schema.js'
import { createCatalogRouteSource } from './route-source.js'
import { parseSchema } from './schema.js'
import { parseStatements } from './statements.js'

const machine = (overrides: Partial<MachineRow> = {}): MachineRow => ({
  id: '148ed193b95089', name: 'quiet-river-1', app: 'web', org: 'acme', host_id: 'h1', region: 'fra', state: 'started',
  instance_id: '01HZZZ', private_ip: 'fdaa:0:1:a7b:1::2', address: '172.19.0.2', image: 'registry/web:1',
  config: { image: 'registry/web:1', env: { DATABASE_URL: 'postgres://user:pw@db' }, files: [{ guest_path: '/etc/key', raw_value: 'c2VjcmV0' }], processes: [{ cmd: ['x'], env: { TOKEN: 't' }, secrets: [{ env_var: 'A', name: 'B' }] }] },
  services: [{ protocol: 'tcp', internal_port: 8080, ports: [{ port: 443, handlers: ['tls', 'http'] }], concurrency: { type: 'requests', soft_limit: 20, hard_limit: 25 } }],
  checks: [], cordoned: false, process_group: 'app', created_at: 1, updated_at: 2, ...overrides,
})

describe('platform schema', () => {
  it('follows the schema rules and its statement builders run as transactions', () => {
    const schema = parseSchema(PLATFORM_SCHEMA_SQL)
    assert.deepEqual([...schema.tables.keys()], ['hosts', 'apps', 'machines', 'volumes'])
    const store = new CrrStore({ path: ':memory:' })
    try {
      store.applySchema(PLATFORM_SCHEMA_SQL)
      const statements = parseStatements([
        upsertHost({ id: 'h1', region: 'fra', addr: '10.0.0.1', proxy_addr: '10.0.0.1:4443', catalog_url: 'http://10.0.0.1:8081', gossip_addr: '10.0.0.1:4001', cpus: 8, memory_mb: 16384, cpus_used: 1.5, memory_mb_used: 512, machines: 1, state: 'up', labels: { rack: 'a' }, last_seen: 5, updated_at: 5 }),
        upsertApp({ name: 'web', org: 'acme', network: 'net1', primary_region: 'fra', hostnames: ['example.com'], created_at: 1, updated_at: 1 }),
        upsertMachine(machine()),
      ])
      assert.ok(store.transact(statements).version)
      // Writing the whole row again with one field changed costs one change.
      const again = store.transact(parseStatements([upsertMachine(machine({ state: 'stopped' }))]))
      assert.deepEqual(again.changeset!.changes.map((c) => c.cid), ['state'])
      assert.equal(store.transact(parseStatements([upsertMachine(machine({ state: 'stopped' }))])).version, null)
    } finally {
      store.close()
    }
  })

  it('keeps secrets out: env values, file contents and secret references are dropped', () => {
    const stored = configForCatalog(machine().config)
    assert.deepEqual(stored.env, { DATABASE_URL: '' })
    assert.deepEqual(stored.files, [{ guest_path: '/etc/key' }])
    assert.deepEqual(stored.processes, [{ cmd: ['x'], env: { TOKEN: '' } }])
    assert.doesNotMatch(JSON.stringify(upsertMachine(machine())), /postgres:|c2VjcmV0|"t"/)
  })
})

describe('route source and client against one node', () => {
  it('a snapshot first, then upserts/removes; app changes re-emit their Machines; the client resubscribes after a node restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hangar-route-'))
    let node = await startCatalogNode({ dbPath: join(dir, 'c.db'), schemaSql: PLATFORM_SCHEMA_SQL, logger: silentLogger })
    const apiAddr = new URL(node.apiUrl).host
    const client = new CatalogClient(node.apiUrl)
    const source = createCatalogRouteSource(client)
    const changes: RouteChange[] = []
    const waitFor = async (what: string, ok: () => boolean) => {
      const deadline = Date.now() + 5000
      while (!ok()) {
        if (Date.now() > deadline) throw new Error(`timed out: ${what}; got ${JSON.stringify(changes.map((c) => c.kind))}`)
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
    }
    try {
      await client.transaction([upsertApp({ name: 'web', org: 'acme', network: 'n', primary_region: 'fra', hostnames: [], created_at: 1, updated_at: 1 }), upsertMachine(machine())])
      source.subscribe((c) => changes.push(c))
      await source.ready
      assert.equal(changes[0]!.kind, 'snapshot')
      await client.transaction([upsertApp({ name: 'web', org: 'acme', network: 'n', primary_region: 'ams', hostnames: ['w.example'], created_at: 1, updated_at: 2 })])
      await waitFor('app change', () => changes.some((c) => c.kind === 'upsert' && c.machine.primaryRegion === 'ams'))
      assert.ok(changes.some((c) => c.kind === 'app' && c.app.hostnames[0] === 'w.example'))
      await client.transaction([upsertMachine(machine({ state: 'destroyed' }))])
      await waitFor('terminal state removes', () => changes.some((c) => c.kind === 'remove' && c.machineId === '148ed193b95089'))

      // A late subscriber gets a snapshot of what is routable now.
      const late: RouteChange[] = []
      source.subscribe((c) => late.push(c))
      assert.deepEqual(late, [{ kind: 'snapshot', machines: [], apps: [{ app: 'web', org: 'acme', hostnames: ['w.example'] }] }])

      // The node restarts (same database, same address): its subscriptions are gone, so the
      // client subscribes afresh and the route source reconciles from the new snapshot.
      await node.close()
      node = await startCatalogNode({ dbPath: join(dir, 'c.db'), schemaSql: PLATFORM_SCHEMA_SQL, apiAddr, logger: silentLogger })
      await client.transaction([upsertMachine(machine({ id: '248ed193b95089', state: 'started' }))]).catch(() => {})
      await waitFor('the Machine written after the restart', () => changes.some((c) => c.kind === 'upsert' && c.machine.machineId === '248ed193b95089'))
      await assert.rejects(client.query('SELECT * FROM nope'), (err: Error & { code?: string }) => err.code === 'invalid_argument' && /no such table: nope/.test(err.message))
    } finally {
      source.close()
      await client.close()
      await node.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
