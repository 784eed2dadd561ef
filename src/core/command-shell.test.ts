import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CommandShell } from './command-shell.js'

test('the command shell runs tools with arguments, input, cwd and exit codes, many at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-shell-'))
  const shell = new CommandShell(join(dir, 'io'))
  t.after(() => { shell.close(); rmSync(dir, { recursive: true, force: true }) })
  const echo = await shell.run('printf', ['%s|', "it's", 'a "quoted" $HOME `x`'])
  assert.deepEqual(echo, { code: 0, signal: null, stdout: `it's|a "quoted" $HOME \`x\`|`, stderr: '' })
  assert.equal((await shell.run('cat', [], { input: 'from stdin' })).stdout, 'from stdin')
  assert.equal((await shell.run('pwd', [], { cwd: dir })).stdout.trim(), dir)
  const failed = await shell.run('sh', ['-c', 'echo oops >&2; exit 3'])
  assert.equal(failed.code, 3)
  assert.equal(failed.stderr, 'oops\n')
  assert.equal((await shell.run('no-such-command-here', [])).code, 127)
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) => shell.run('echo', [String(i)])))
  assert.deepEqual(many.map((r) => r.stdout.trim()), Array.from({ length: 50 }, (_, i) => String(i)))
  const started = Date.now()
  const slow = await shell.run('sleep', ['10'], { timeoutMs: 200 })
  assert.ok(Date.now() - started < 5000, 'a timed-out command is killed')
  assert.equal(slow.code, 137)
})
