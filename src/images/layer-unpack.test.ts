import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { buildTar, type LayerEntry } from '../../test/kit/images.js'
import { digestOf } from './digest.js'
import { isImagePullError } from './errors.js'
import { sniffCompression, unpackLayer } from './layer-unpack.js'

function workspace(t: { after: (fn: () => void) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-unpack-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'tmp'))
  mkdirSync(join(dir, 'layers'))
  return dir
}

async function layerBlob(dir: string, entries: LayerEntry[], compress: (tar: Buffer) => Buffer = (t) => gzipSync(t)) {
  const tar = await buildTar(entries)
  const blob = compress(tar)
  const blobPath = join(dir, `blob-${digestOf(blob).slice(7, 19)}`)
  writeFileSync(blobPath, blob)
  return { blobPath, diffId: digestOf(tar) }
}

const ENTRIES: LayerEntry[] = [
  { path: 'etc', type: 'dir' },
  { path: 'etc/owned', content: 'secret-ish\n', uid: 1234, gid: 5678, mode: 0o640 },
  { path: 'etc/suid', content: '#!/bin/sh\n', mode: 0o4755 },
  { path: 'etc/hard', type: 'hardlink', target: 'etc/owned' },
  { path: 'etc/abs-link', type: 'symlink', target: '/usr/bin/busybox' },
  { path: 'data', type: 'dir', mode: 0o711 },
  { path: 'data/.wh.gone', type: 'file' },
  { path: 'opaque', type: 'dir' },
  { path: 'opaque', type: 'opaque' },
]

test('a gzip layer unpacks with owners, modes, links and overlay-form whiteouts, then moves into place', async (t) => {
  const dir = workspace(t)
  const { blobPath, diffId } = await layerBlob(dir, ENTRIES)
  const target = join(dir, 'layers/one')
  await unpackLayer({ blobPath, declaredCompression: 'gzip', diffId, targetDir: target, tmpRoot: join(dir, 'tmp'), what: 'layer 0' })

  const owned = statSync(join(target, 'etc/owned'))
  assert.equal(owned.uid, 1234)
  assert.equal(owned.gid, 5678)
  assert.equal(owned.mode & 0o7777, 0o640)
  assert.equal(statSync(join(target, 'etc/suid')).mode & 0o7777, 0o4755)
  assert.equal(statSync(join(target, 'etc/hard')).ino, owned.ino)
  assert.equal(readlinkSync(join(target, 'etc/abs-link')), '/usr/bin/busybox')
  assert.equal(statSync(join(target, 'data')).mode & 0o777, 0o711)
  assert.equal(statSync(target).mode & 0o777, 0o755)
  const whiteout = lstatSync(join(target, 'data/gone'))
  assert.ok(whiteout.isCharacterDevice() && whiteout.rdev === 0)
  assert.equal(execFileSync('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', join(target, 'opaque')]).toString(), 'y')
  assert.deepEqual(readdirSync(join(dir, 'tmp')), [])
})

test('uncompressed and zstd layers are recognised by their magic bytes', async (t) => {
  const dir = workspace(t)
  const plain = await layerBlob(dir, [{ path: 'hello', content: 'plain' }], (tar) => tar)
  assert.equal(await sniffCompression(plain.blobPath), 'none')
  // Labelled gzip but really a plain tar: the bytes decide.
  await unpackLayer({ ...plain, declaredCompression: 'gzip', targetDir: join(dir, 'layers/plain'), tmpRoot: join(dir, 'tmp'), what: 'layer' })
  assert.equal(readFileSync(join(dir, 'layers/plain/hello'), 'utf8'), 'plain')

  const zstd = await layerBlob(dir, [{ path: 'hello', content: 'zstd' }], (tar) => execFileSync('zstd', ['-q', '-c'], { input: tar }))
  assert.equal(await sniffCompression(zstd.blobPath), 'zstd')
  await unpackLayer({ ...zstd, declaredCompression: 'zstd', targetDir: join(dir, 'layers/zstd'), tmpRoot: join(dir, 'tmp'), what: 'layer' })
  assert.equal(readFileSync(join(dir, 'layers/zstd/hello'), 'utf8'), 'zstd')
})

test('a wrong diff_id fails with digest_mismatch and leaves neither the layer nor temp files', async (t) => {
  const dir = workspace(t)
  const { blobPath } = await layerBlob(dir, [{ path: 'hello', content: 'x' }])
  const wrong = digestOf(Buffer.from('something else'))
  await assert.rejects(
    unpackLayer({ blobPath, declaredCompression: 'gzip', diffId: wrong, targetDir: join(dir, 'layers/x'), tmpRoot: join(dir, 'tmp'), what: 'image "a": layer 0' }),
    (err) => isImagePullError(err, 'digest_mismatch') && err.message.startsWith('image "a": layer 0 uncompressed content (diff_id) digest mismatch'),
  )
  assert.ok(!existsSync(join(dir, 'layers/x')))
  assert.deepEqual(readdirSync(join(dir, 'tmp')), [])
})

test('corrupt gzip fails cleanly', async (t) => {
  const dir = workspace(t)
  const { blobPath, diffId } = await layerBlob(dir, [{ path: 'hello', content: 'x'.repeat(10000) }])
  const bytes = readFileSync(blobPath)
  bytes[bytes.length - 12] ^= 0xff
  writeFileSync(blobPath, bytes)
  await assert.rejects(
    unpackLayer({ blobPath, declaredCompression: 'gzip', diffId, targetDir: join(dir, 'layers/x'), tmpRoot: join(dir, 'tmp'), what: 'layer 0' }),
    (err) => isImagePullError(err) && (err.reason === 'invalid_image' || err.reason === 'digest_mismatch'),
  )
  assert.ok(!existsSync(join(dir, 'layers/x')))
  assert.deepEqual(readdirSync(join(dir, 'tmp')), [])
})

test('a layer cannot write outside its directory: neither through ../ names nor through a symlink', async (t) => {
  const dir = workspace(t)
  const outside = join(dir, 'outside')
  mkdirSync(outside)
  const { blobPath, diffId } = await layerBlob(dir, [
    { path: '../escaped-by-dotdot', content: 'evil' },
    { path: 'link', type: 'symlink', target: outside },
    { path: 'link/escaped-by-symlink', content: 'evil' },
  ])
  const target = join(dir, 'layers/evil')
  // GNU tar refuses both members ("Member name contains '..'", "Cannot open: Not a directory").
  await assert.rejects(
    unpackLayer({ blobPath, declaredCompression: 'gzip', diffId, targetDir: target, tmpRoot: join(dir, 'tmp'), what: 'layer' }),
    (err) => isImagePullError(err, 'unpack_failed') && err.message.startsWith('layer: tar could not unpack the layer'),
  )
  assert.ok(!existsSync(target))
  assert.deepEqual(readdirSync(outside), [])
  assert.ok(!existsSync(join(dir, 'escaped-by-dotdot')))
  assert.ok(!existsSync(join(dir, 'layers/escaped-by-dotdot')))
  assert.ok(!existsSync(join(dir, 'tmp/escaped-by-dotdot')))
})
