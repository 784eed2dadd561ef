import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { silentLogger } from '../core/index.js'
import { startCatalogNode, type CatalogNode } from './catalog-node.js'

// The HTTP API of one real node over real sockets: the shapes Corrosion's clients expect, and
// clear errors (never a crash) for bad SQL and hostile input.

const SCHEMA = `
  CREATE TABLE kv (k TEXT NOT NULL PRIMARY KEY, v, n INTEGER NOT NULL DEFAULT 0);
  CREATE TABLE other (id INTEGER NOT NULL PRIMARY KEY, label TEXT);
`

let node: CatalogNode

async function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; text: string; headers: Headers }> {
  const response = await fetch(node.apiUrl + path, { method: 'POST', body: typeof body === 'string' && path !== '/v1/queries' && path !== '/v1/subscriptions' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } })
  return { status: response.status, text: await response.text(), headers: response.headers }
}

async function postRaw(path: string, raw: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(node.apiUrl + path, { method: 'POST', body: raw })
  return { status: response.status, json: await response.json() as Record<string, unknown> }
}

/** Reads NDJSON lines from a streaming response until `count` lines arrived. */
async function readLines(response: Response, count: number, timeoutMs = 5000): Promise<string[]> {
  const reader = response.body!.getReader()
  const decoder = new TextDecoder()
  const out: string[] = []
  let pending = ''
  const deadline = Date.now() + timeoutMs
  while (out.length < count) {
    let timer: NodeJS.Timeout | undefined
    const result = await Promise.race([reader.read(), new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out with ${out.length}/${count} lines: ${out.join(' | ')}`)), Math.max(1, deadline - Date.now())) })])
    clearTimeout(timer)
    if (result.done) break
    pending += decoder.decode(result.value, { stream: true })
    let i: number
    while ((i = pending.indexOf('\n')) >= 0) { out.push(pending.slice(0, i)); pending = pending.slice(i + 1) }
  }
  reader.releaseLock()
  return out
}

describe('catalog HTTP API', () => {
  before(async () => {
    node = await startCatalogNode({ dbPath: ':memory:', schemaSql: SCHEMA, logger: silentLogger })
  })
  after(async () => {
    await node.close()
  })

  it('POST /v1/transactions takes every statement form and answers {results, time, version, actor_id}', async () => {
    const response = await post('/v1/transactions', [
      "INSERT INTO kv (k, v) VALUES ('a', 'plain')",
      ['INSERT INTO kv (k, v, n) VALUES (?, ?, ?)', ['b', 1.5, 7]],
      ['INSERT INTO kv (k, v) VALUES (:k, :v)', { ':k': 'c', v: { blob: Buffer.from('hi').toString('base64') } }],
      { query: 'INSERT INTO kv (k, v) VALUES (?, ?)', params: ['d', null] },
      { query: 'UPDATE kv SET n = @n WHERE k = @k', named_params: { n: 3, k: 'a' } },
    ])
    assert.equal(response.status, 200, response.text)
    const body = JSON.parse(response.text)
    assert.deepEqual(Object.keys(body), ['results', 'time', 'version', 'actor_id'])
    assert.deepEqual(body.results.map((r: { rows_affected: number }) => r.rows_affected), [1, 1, 1, 1, 1])
    assert.equal(body.version, 1)
    assert.equal(body.actor_id, node.siteId)
    assert.match(body.actor_id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  })

  it('POST /v1/queries streams columns, rows with rowids and eoq as NDJSON, keeping value types', async () => {
    const response = await post('/v1/queries', ['SELECT k, v, n FROM kv WHERE k IN (?, ?, ?) ORDER BY k', ['a', 'b', 'c']])
    assert.equal(response.status, 200)
    assert.match(response.headers.get('content-type') ?? '', /ndjson/)
    const lines = response.text.trim().split('\n')
    assert.equal(lines[0], '{"columns":["k","v","n"]}')
    assert.equal(lines[1], '{"row":[1,["a","plain",3]]}')
    assert.equal(lines[2], '{"row":[2,["b",1.5,7]]}')
    assert.equal(lines[3], `{"row":[3,["c",{"blob":"${Buffer.from('hi').toString('base64')}"},0]]}`)
    assert.match(lines[4]!, /^\{"eoq":\{"time":[0-9.e-]+\}\}$/)
  })

  it('exposes the crsql_changes view to queries', async () => {
    const response = await post('/v1/queries', `SELECT "table", hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes WHERE "table" = 'kv' AND cid = 'n' AND val = 3`)
    const rows = response.text.trim().split('\n').slice(1, -1).map((l) => JSON.parse(l).row[1])
    assert.equal(rows.length, 1)
    // One TEXT column (type 3, one length byte: 0x0B), length 1, 'a'.
    assert.deepEqual(rows[0], ['kv', '010B0161', 'n', 3, 2, 1, 1, 12])
  })

  it('rejects bad SQL, writes outside replicated tables, DDL and hostile bodies with clear 4xx errors', async () => {
    const cases: Array<[string, string, number, RegExp]> = [
      ['/v1/transactions', JSON.stringify(['INSERT INTO nope VALUES (1)']), 400, /statement 0: no such table: nope/],
      ['/v1/transactions', JSON.stringify(['INSERT INTO kv (k) VALUES (']), 400, /statement 0: incomplete input/],
      ['/v1/transactions', JSON.stringify(['DROP TABLE kv']), 400, /only INSERT, UPDATE, DELETE/],
      ['/v1/transactions', JSON.stringify(['DELETE FROM __hangar_bookkeeping']), 400, /not a replicated table/],
      ['/v1/transactions', JSON.stringify(["INSERT INTO __corro_members (site_id) VALUES ('x')"]), 400, /not a replicated table/],
      ['/v1/transactions', JSON.stringify(["ATTACH '/tmp/evil.db' AS evil"]), 400, /only INSERT, UPDATE, DELETE/],
      ['/v1/transactions', JSON.stringify(["INSERT INTO kv (k) VALUES ('x'); DROP TABLE kv"]), 400, /more than one statement/],
      ['/v1/transactions', JSON.stringify([['INSERT INTO kv (k, v) VALUES (?, ?)', ['x', { nested: true }]]]), 400, /param 2: an object is not an SQL value/],
      ['/v1/transactions', JSON.stringify([]), 400, /no statements/],
      ['/v1/transactions', JSON.stringify({ sql: 'x' }), 400, /JSON array of statements/],
      ['/v1/transactions', '{not json', 400, /not valid JSON/],
      ['/v1/transactions', JSON.stringify([['SELECT 1', 'x']]), 400, /params must be an array or an object/],
      ['/v1/transactions', JSON.stringify([{ query: 'SELECT 1', extra: 1 }]), 400, /unknown field extra/],
      ['/v1/queries', JSON.stringify("DELETE FROM kv"), 400, /a query must be a SELECT/],
      ['/v1/queries', JSON.stringify("SELECT * FROM missing"), 400, /no such table: missing/],
      ['/v1/queries', JSON.stringify(['SELECT ?', []]), 400, /Too few parameter values/],
      ['/v1/subscriptions', JSON.stringify('UPDATE kv SET n = 1'), 400, /a query must be a SELECT/],
    ]
    for (const [path, raw, status, pattern] of cases) {
      const { status: got, json } = await postRaw(path, raw)
      assert.equal(got, status, `${path} ${raw}: ${JSON.stringify(json)}`)
      assert.match(String(json.error), pattern, `${path} ${raw}`)
      assert.equal(json.code, 'invalid_argument')
    }
    const big = await fetch(node.apiUrl + '/v1/transactions', { method: 'POST', body: 'x'.repeat(17 * 1024 * 1024) })
    assert.equal(big.status, 413)
    const missing = await fetch(node.apiUrl + '/v1/nothing')
    assert.equal(missing.status, 404)
    // The failed transaction above was rolled back as a whole, and the node still serves.
    const still = await post('/v1/queries', "SELECT count(*) FROM kv WHERE k = 'x'")
    assert.equal(still.text.split('\n')[1], '{"row":[1,[0]]}')
  })

  it('a failing statement rolls back the whole transaction and names its index', async () => {
    const response = await post('/v1/transactions', [["INSERT INTO kv (k) VALUES ('t1')"], ['INSERT INTO kv (k, n) VALUES (?, NULL)', ['t2']]])
    assert.equal(response.status, 400)
    const body = JSON.parse(response.text)
    assert.equal(body.statement_index, 1)
    assert.match(body.results[0].error, /NOT NULL constraint failed: kv.n/)
    const check = await post('/v1/queries', "SELECT count(*) FROM kv WHERE k = 't1'")
    assert.equal(check.text.split('\n')[1], '{"row":[1,[0]]}')
  })

  it('POST /v1/subscriptions sends rows, eoq with change_id, then change events; GET …?from= resumes', async () => {
    const controller = new AbortController()
    const response = await fetch(node.apiUrl + '/v1/subscriptions', { method: 'POST', body: JSON.stringify("SELECT k, n FROM kv WHERE k LIKE 's%'"), signal: controller.signal })
    assert.equal(response.status, 200)
    const id = response.headers.get('corro-query-id')
    assert.match(id ?? '', /^[0-9a-f-]{36}$/)
    await post('/v1/transactions', ["INSERT INTO kv (k, n) VALUES ('s1', 1)"])
    const first = await readLines(response, 3)
    assert.equal(first[0], '{"columns":["k","n"]}')
    assert.match(first[1]!, /^\{"eoq":\{"time":[0-9.e-]+,"change_id":0\}\}$/)
    assert.equal(first[2], '{"change":["insert",1,["s1",1],1]}')
    await post('/v1/transactions', ["UPDATE kv SET n = 2 WHERE k = 's1'", "INSERT INTO kv (k, n) VALUES ('s2', 5)"])
    await post('/v1/transactions', ["DELETE FROM kv WHERE k = 's1'"])
    await post('/v1/transactions', ["UPDATE kv SET n = 9 WHERE k = 'zzz'"]) // not in the result: no event
    const more = await readLines(response, 3)
    assert.deepEqual(more, ['{"change":["update",1,["s1",2],2]}', '{"change":["insert",2,["s2",5],3]}', '{"change":["delete",1,["s1",2],4]}'])
    controller.abort()

    const resumed = await fetch(`${node.apiUrl}/v1/subscriptions/${id}?from=2`)
    assert.equal(resumed.status, 200)
    const replay = await readLines(resumed, 3)
    assert.deepEqual(replay, ['{"columns":["k","n"]}', '{"change":["insert",2,["s2",5],3]}', '{"change":["delete",1,["s1",2],4]}'])
    await resumed.body?.cancel()

    const again = await fetch(`${node.apiUrl}/v1/subscriptions/${id}`)
    const snapshot = await readLines(again, 3)
    assert.deepEqual(snapshot.slice(0, 2), ['{"columns":["k","n"]}', '{"row":[2,["s2",5]]}'])
    assert.match(snapshot[2]!, /"change_id":4/)
    await again.body?.cancel()

    assert.equal((await fetch(`${node.apiUrl}/v1/subscriptions/${id}?from=99`)).status, 400)
    assert.equal((await fetch(`${node.apiUrl}/v1/subscriptions/00000000-0000-0000-0000-000000000000`)).status, 404)
  })

  it('GET /v1/health and /v1/table_stats', async () => {
    const health = await (await fetch(node.apiUrl + '/v1/health')).json() as Record<string, unknown>
    assert.equal(health.status, 'ok')
    assert.equal(health.site_id, node.siteId)
    assert.equal(health.gaps, 0)
    const stats = await (await fetch(node.apiUrl + '/v1/table_stats')).json() as { tables: Record<string, number> }
    assert.ok(stats.tables.kv! > 0)
    assert.equal(stats.tables.other, 0)
  })
})

describe('catalog HTTP API with a bearer token', () => {
  it('refuses requests without the token', async () => {
    const secured = await startCatalogNode({ dbPath: ':memory:', schemaSql: SCHEMA, apiToken: 's3cret', logger: silentLogger })
    try {
      const denied = await fetch(secured.apiUrl + '/v1/queries', { method: 'POST', body: JSON.stringify('SELECT 1') })
      assert.equal(denied.status, 401)
      const wrong = await fetch(secured.apiUrl + '/v1/queries', { method: 'POST', body: JSON.stringify('SELECT 1'), headers: { authorization: 'Bearer nope' } })
      assert.equal(wrong.status, 401)
      const allowed = await fetch(secured.apiUrl + '/v1/queries', { method: 'POST', body: JSON.stringify('SELECT 1'), headers: { authorization: 'Bearer s3cret' } })
      assert.equal(allowed.status, 200)
      await allowed.text()
    } finally {
      await secured.close()
    }
  })
})
