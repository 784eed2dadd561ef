import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInvalidArgument } from '../core/index.js'
import { shellSplit } from './shell-split.js'

test('commands split like a shell without expansion', () => {
  assert.deepEqual(shellSplit('bin/rails server -b 0.0.0.0'), ['bin/rails', 'server', '-b', '0.0.0.0'])
  assert.deepEqual(shellSplit(`  sh -c 'echo "$HOME" && sleep 1'  `), ['sh', '-c', 'echo "$HOME" && sleep 1'])
  assert.deepEqual(shellSplit('echo "a \\"quoted\\" word" b\\ c'), ['echo', 'a "quoted" word', 'b c'])
  assert.deepEqual(shellSplit('node server.js # the web process'), ['node', 'server.js'])
  assert.deepEqual(shellSplit('a""b \'\' c'), ['ab', '', 'c'])
  assert.deepEqual(shellSplit('echo a#b'), ['echo', 'a#b'], '# inside a word is not a comment')
  assert.deepEqual(shellSplit(''), [])
})

test('unclosed quotes are typed errors naming the field', () => {
  assert.throws(() => shellSplit('echo "oops', 'processes.web'), (err: Error) => isInvalidArgument(err) && /processes\.web: a double quote is not closed/.test(err.message))
  assert.throws(() => shellSplit("echo 'oops"), /single quote is not closed/)
  assert.throws(() => shellSplit('echo \\'), /unfinished escape/)
})
