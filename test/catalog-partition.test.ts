import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { dumpTables, members, startNodeProcess, stopNode, TEST_SCHEMA, transact, waitFor, waitForConvergence, type CatalogNodeProcess } from './kit/catalog-cluster.js'
import { createNetnsLab, type NetnsLab } from './kit/catalog-netns.js'

// Three catalog nodes, each in its own network namespace on a shared bridge. One node is cut off
// by nftables drop rules inside its namespace (its gossip, broadcasts and sync traffic really
// are dropped), both sides keep writing — to the same rows too — and after the rules are removed
// every node ends with byte-identical tables.

describe('catalog partition (network namespaces, nftables drop)', () => {
  let lab: NetnsLab
  let dir: string
  const nodes: CatalogNodeProcess[] = []

  before(async () => {
    lab = await createNetnsLab(3)
    dir = mkdtempSync(join(tmpdir(), 'hangar-catalog-partition-'))
    const schemaPath = join(dir, 'schema.sql')
    writeFileSync(schemaPath, TEST_SCHEMA)
    for (const [i, labNode] of lab.nodes.entries()) {
      nodes.push(await startNodeProcess({
        dir, name: `p${i + 1}`, netns: labNode.netns, schemaPath,
        gossipAddr: `${labNode.ip}:4001`, apiAddr: `${labNode.ip}:8081`,
        bootstrap: i === 0 ? [] : [`${lab.nodes[0]!.ip}:4001`],
      }))
    }
    await waitFor(async () => {
      for (const node of nodes) {
        const alive = (await members(node.apiUrl)).filter((m) => m.state === 'alive').length
        if (alive !== nodes.length - 1) return false
      }
      return true
    }, { timeoutMs: 10_000, what: 'all members alive' })
  })

  after(async () => {
    for (const node of nodes) await stopNode(node, 'SIGKILL').catch(() => {})
    await lab?.close()
    if (dir && !process.env.HANGAR_KEEP_TEST_DIRS) rmSync(dir, { recursive: true, force: true })
  })

  it('a partitioned node that missed writes (and made its own) ends byte-identical after the partition heals', async () => {
    const [a, b, c] = nodes as [CatalogNodeProcess, CatalogNodeProcess, CatalogNodeProcess]
    await transact(a.apiUrl, [["INSERT INTO kv (k, v) VALUES ('shared', 'before')"]])
    await waitForConvergence(nodes)

    await lab.partition(lab.nodes[2]!)
    // SWIM on both sides notices: proof the drop rules bite.
    await waitFor(async () => (await members(a.apiUrl)).find((m) => m.addr === c.gossipAddr)?.state === 'down' && (await members(c.apiUrl)).every((m) => m.state === 'down'), { timeoutMs: 8_000, what: 'both sides to see the partition' })

    for (let i = 0; i < 20; i++) {
      await transact((i % 2 === 0 ? a : b).apiUrl, [['INSERT INTO kv (k, v, n) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = excluded.n', [`majority-${i % 7}`, `from-${i}`, i]]])
    }
    await transact(a.apiUrl, [["UPDATE kv SET v = 'majority-side', n = 1 WHERE k = 'shared'"], ['INSERT INTO pairs (a, b, v) VALUES (?, ?, ?)', ['x', 1, 2.5]]])
    await transact(c.apiUrl, [["UPDATE kv SET v = 'minority-side', n = n + 5 WHERE k = 'shared'"], ["UPDATE kv SET n = n + 1 WHERE k = 'shared'"], ["INSERT INTO kv (k, v) VALUES ('minority-only', x'00ff')"], ['DELETE FROM kv WHERE k = ?', ['nothing']]])
    await new Promise((resolve) => setTimeout(resolve, 1500))
    const isolated = await dumpTables(c.apiUrl)
    assert.doesNotMatch(isolated, /majority-/, 'no write crossed the partition')
    assert.notEqual(isolated, await dumpTables(a.apiUrl))

    await lab.heal(lab.nodes[2]!)
    const dump = await waitForConvergence(nodes, 20_000)
    assert.match(dump, /majority-6/)
    assert.match(dump, /minority-only/)
    // c wrote n twice (col_version 3 beats 2); both wrote v once (col_version 2 each), so the
    // larger value wins: "minority-side" > "majority-side".
    assert.match(dump, /\{"row":\[\d+,\["shared","minority-side",6,null\]\]\}/)
    await waitFor(async () => (await members(a.apiUrl)).find((m) => m.addr === c.gossipAddr)?.state === 'alive', { timeoutMs: 10_000, what: 'the healed node to be alive again' })
  })
})
