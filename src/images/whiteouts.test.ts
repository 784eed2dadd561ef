import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { convertWhiteouts, planWhiteouts } from './whiteouts.js'

test('planWhiteouts maps .wh. markers to deletions and opaque directories', () => {
  assert.deepEqual(planWhiteouts([
    '/l/data/.wh.gone.txt',
    '/l/opaque/.wh..wh..opq',
    '/l/.wh.rootfile',
    '/l/x/.wh..wh.plnk',
    '/l/x/.wh..',
    '/l/not-a-marker',
  ]), {
    markers: ['/l/data/.wh.gone.txt', '/l/opaque/.wh..wh..opq', '/l/.wh.rootfile', '/l/x/.wh..wh.plnk', '/l/x/.wh..'],
    deletions: ['/l/data/gone.txt', '/l/rootfile'],
    opaqueDirs: ['/l/opaque'],
  })
})

test('convertWhiteouts leaves overlayfs whiteouts: 0/0 character devices and trusted.overlay.opaque=y', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hangar-whiteouts-'))
  t.after(() => rmSync(root, { recursive: true, force: true }))
  mkdirSync(join(root, 'data'))
  writeFileSync(join(root, 'data/.wh.gone.txt'), '')
  writeFileSync(join(root, 'data/keep.txt'), 'keep')
  mkdirSync(join(root, 'opaque'))
  writeFileSync(join(root, 'opaque/.wh..wh..opq'), '')
  writeFileSync(join(root, 'opaque/new.txt'), 'new')
  writeFileSync(join(root, 'data/.wh.both'), '') // a layer that also ships 'both': the whiteout wins
  mkdirSync(join(root, 'data/both'))
  writeFileSync(join(root, 'data/with space.txt'), 'x')
  writeFileSync(join(root, 'data/.wh.with space.txt'), '')

  await convertWhiteouts(root, 'test layer')

  for (const name of ['gone.txt', 'both', 'with space.txt']) {
    const st = lstatSync(join(root, 'data', name))
    assert.ok(st.isCharacterDevice(), name)
    assert.equal(st.rdev, 0, name)
  }
  assert.deepEqual(readdirSync(join(root, 'data')).sort(), ['both', 'gone.txt', 'keep.txt', 'with space.txt'])
  assert.deepEqual(readdirSync(join(root, 'opaque')), ['new.txt'])
  assert.equal(execFileSync('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', join(root, 'opaque')]).toString(), 'y')
})

test('a layer without whiteouts is left as it is', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hangar-whiteouts-'))
  t.after(() => rmSync(root, { recursive: true, force: true }))
  writeFileSync(join(root, 'file'), 'x')
  const plan = await convertWhiteouts(root, 'test layer')
  assert.deepEqual(plan, { markers: [], deletions: [], opaqueDirs: [] })
  assert.deepEqual(readdirSync(root), ['file'])
})
