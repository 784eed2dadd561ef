import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Supervisor, nextBackoff } from './supervisor.js'
import type { Logger } from '../core/index.js'

test('backoff doubles while a component keeps dying, up to the cap, and resets after a stable run', () => {
  const options = { minMs: 200, maxMs: 10_000, stableAfterMs: 30_000 }
  let backoff = 0
  const seen: number[] = []
  for (let i = 0; i < 8; i++) { backoff = nextBackoff(backoff, 50, options); seen.push(backoff) }
  assert.deepEqual(seen, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000])
  assert.equal(nextBackoff(10_000, 31_000, options), 200)
})

test('a component that dies is restarted, and the supervisor logs why', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-supervisor-'))
  const warnings: Array<Record<string, unknown>> = []
  const logger: Logger = { debug() {}, info() {}, error() {}, warn: (_m, f) => { warnings.push(f ?? {}) }, child() { return logger } }
  const supervisor = new Supervisor({
    dir, logsDir: join(dir, 'logs'), logger, minBackoffMs: 20, maxBackoffMs: 100,
    components: [{ name: 'flaky', command: 'sh', args: ['-c', 'echo started; sleep 30'] }],
  })
  t.after(async () => { await supervisor.stop(2000); rmSync(dir, { recursive: true, force: true }) })
  await supervisor.start()
  const first = supervisor.pid('flaky')!
  assert.equal(Number(readFileSync(join(dir, 'flaky.pid'), 'utf8')), first)
  process.kill(first, 'SIGKILL')
  const deadline = Date.now() + 5000
  while ((supervisor.pid('flaky') === undefined || supervisor.pid('flaky') === first) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  const second = supervisor.pid('flaky')!
  assert.ok(second && second !== first, 'restarted with a new pid')
  assert.equal(supervisor.restarts('flaky'), 1)
  assert.equal(warnings[0]?.reason, 'killed by SIGKILL')
  assert.equal(warnings[0]?.component, 'flaky')
  // The restarted process writes its first line a moment after it exists (longer on a busy host).
  const logDeadline = Date.now() + 15_000
  while (!/started\nstarted\n/.test(readFileSync(join(dir, 'logs', 'flaky.log'), 'utf8')) && Date.now() < logDeadline) await new Promise((r) => setTimeout(r, 10))
  assert.match(readFileSync(join(dir, 'logs', 'flaky.log'), 'utf8'), /started\nstarted\n/, 'both runs wrote to the component log')
})
