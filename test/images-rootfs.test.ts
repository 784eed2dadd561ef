// Copy-on-write root filesystems over pulled images: real overlayfs mounts over layers pulled
// from a real registry. Every mount is released in t.after / after, also when a test fails.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import {
  ImageStore, isRootfsMounted, listRootfsMounts, prepareRootfs, releaseRootfs, resetRootfs, rootfsPaths, sweepRootfsMounts, unmountRootfs, type PulledImage,
} from '../src/images/index.js'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { HTTP_SERVER_BODY, WHITEOUT_IMAGE_EXPECT, pushBusyboxImage, pushHttpServerImage, pushWhiteoutImage } from './kit/images.js'

let registry: TestRegistry
let workRoot: string
let store: ImageStore
let whiteouts: PulledImage
let httpServer: PulledImage
let busybox: PulledImage

before(async () => {
  workRoot = await mkdtemp(join(tmpdir(), 'hangar-images-rootfs-'))
  registry = await startRegistry()
  const [w, h, b] = await Promise.all([pushWhiteoutImage(registry), pushHttpServerImage(registry), pushBusyboxImage(registry)])
  store = new ImageStore({ dataDir: join(workRoot, 'images') })
  whiteouts = await store.pull(w.ref)
  httpServer = await store.pull(h.ref)
  busybox = await store.pull(b.ref)
})

after(async () => {
  // Belt and braces: whatever a failed test left mounted under our root.
  if (workRoot) for (const m of await listRootfsMounts(workRoot)) await releaseRootfs(m.machineDir)
  await store?.close()
  await registry?.stop()
  if (workRoot) await rm(workRoot, { recursive: true, force: true })
})

async function machineDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(workRoot, 'machine-'))
  t.after(() => releaseRootfs(dir))
  return dir
}

/** A fingerprint of a directory tree: every path with its type, mode, owner and content hash. */
function fingerprint(root: string): string {
  const lines: string[] = []
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name)
      const st = lstatSync(path)
      let detail = ''
      if (st.isFile()) detail = createHash('sha256').update(readFileSync(path)).digest('hex')
      else if (st.isSymbolicLink()) detail = readlinkSync(path)
      else if (st.isCharacterDevice()) detail = `c${st.rdev}`
      lines.push(`${relative(root, path)} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${detail}`)
      if (st.isDirectory()) walk(path)
    }
  }
  walk(root)
  return lines.join('\n')
}

test('the mounted rootfs shows the image with its whiteouts and opaque directories applied', async (t) => {
  const rootfs = await prepareRootfs(whiteouts, await machineDir(t))
  for (const [path, content] of Object.entries(WHITEOUT_IMAGE_EXPECT.present)) assert.equal(readFileSync(join(rootfs, path), 'utf8'), content, path)
  for (const path of WHITEOUT_IMAGE_EXPECT.absent) assert.ok(!existsSync(join(rootfs, path)), `${path} must be gone`)
  assert.deepEqual(readdirSync(join(rootfs, 'opaque')), ['new.txt'])
  assert.deepEqual(readdirSync(join(rootfs, 'data')).sort(), ['keep.txt', 'nested', 'readded.txt'])
  // The rootfs is a working Linux userland: busybox runs in it.
  assert.equal(execFileSync('chroot', [rootfs, '/bin/sh', '-c', 'cat /data/keep.txt; id -un; ls /opaque'], { encoding: 'utf8' }), 'keep\nroot\nnew.txt\n')
})

test("a Machine's writes land in its upper dir only; the shared layers never change", async (t) => {
  const layersBefore = httpServer.layerDirs.map(fingerprint)
  const dirA = await machineDir(t)
  const dirB = await machineDir(t)
  const rootA = await prepareRootfs(httpServer, dirA)
  const rootB = await prepareRootfs(httpServer, dirB)

  execFileSync('chroot', [rootA, '/bin/sh', '-c', 'echo changed > /www/index.html && mkdir -p /var/app && echo new > /var/app/f && chmod 600 /etc/passwd'])
  unlinkSync(join(rootA, 'bin/sleep'))
  writeFileSync(join(rootA, 'tmp/scratch'), 'scratch')

  assert.equal(readFileSync(join(rootA, 'www/index.html'), 'utf8'), 'changed\n')
  assert.equal(readFileSync(join(rootB, 'www/index.html'), 'utf8'), HTTP_SERVER_BODY, 'another Machine on the same image is unaffected')
  assert.ok(existsSync(join(rootB, 'bin/sleep')))
  const upper = rootfsPaths(dirA).upper
  assert.equal(readFileSync(join(upper, 'www/index.html'), 'utf8'), 'changed\n')
  assert.equal(readFileSync(join(upper, 'var/app/f'), 'utf8'), 'new\n')
  assert.ok(lstatSync(join(upper, 'bin/sleep')).isCharacterDevice(), 'the deletion is an overlay whiteout in upper')
  assert.deepEqual(httpServer.layerDirs.map(fingerprint), layersBefore, 'layer directories are byte-for-byte unchanged')
})

test('prepareRootfs is idempotent: the same image reuses the mount and keeps the writes', async (t) => {
  const dir = await machineDir(t)
  const first = await prepareRootfs(busybox, dir)
  writeFileSync(join(first, 'tmp/kept'), 'kept')
  const started = performance.now()
  const second = await prepareRootfs(busybox, dir)
  const reuseMs = performance.now() - started
  assert.equal(second, first)
  assert.equal(readFileSync(join(second, 'tmp/kept'), 'utf8'), 'kept')
  const mounts = execFileSync('findmnt', ['-n', '-o', 'TARGET', '--mountpoint', first], { encoding: 'utf8' }).trim().split('\n')
  assert.equal(mounts.length, 1, 'mounted once')
  t.diagnostic(`reuse of a mounted rootfs: ${reuseMs.toFixed(2)} ms`)

  // Unmounted but not reset (e.g. after a host reboot): mounting again brings the writes back.
  await unmountRootfs(dir)
  assert.equal(await isRootfsMounted(dir), false)
  const again = await prepareRootfs(busybox, dir)
  assert.equal(readFileSync(join(again, 'tmp/kept'), 'utf8'), 'kept')
})

test('another image on the same Machine dir starts from a clean upper', async (t) => {
  const dir = await machineDir(t)
  const root = await prepareRootfs(busybox, dir)
  writeFileSync(join(root, 'tmp/old-image-write'), 'x')
  const swapped = await prepareRootfs(httpServer, dir)
  assert.equal(readFileSync(join(swapped, 'www/index.html'), 'utf8'), HTTP_SERVER_BODY)
  assert.ok(!existsSync(join(swapped, 'tmp/old-image-write')))
  assert.equal((await listRootfsMounts(dir)).length, 1)
})

test('reset drops the writes and unmounts; release unmounts and deletes; both are idempotent', async (t) => {
  const dir = await machineDir(t)
  const root = await prepareRootfs(busybox, dir)
  writeFileSync(join(root, 'etc/hostname'), 'written')
  assert.deepEqual((await listRootfsMounts(workRoot)).filter((m) => m.machineDir === dir), [{ rootfs: root, machineDir: dir, manifestDigest: busybox.manifestDigest }])

  await resetRootfs(dir)
  await resetRootfs(dir)
  assert.equal(await isRootfsMounted(dir), false)
  assert.ok(!existsSync(rootfsPaths(dir).upper))
  const fresh = await prepareRootfs(busybox, dir)
  assert.ok(!existsSync(join(fresh, 'etc/hostname')), 'the write is gone after reset')

  await releaseRootfs(dir)
  await releaseRootfs(dir)
  assert.equal(await isRootfsMounted(dir), false)
  assert.deepEqual(readdirSync(dir), [], 'rootfs and overlay dirs are deleted')
  assert.deepEqual((await listRootfsMounts(workRoot)).filter((m) => m.machineDir === dir), [])
  assert.ok(statSync(busybox.layerDirs[0]!).isDirectory(), 'the shared layers stay')
})

test('leaked mounts are found under a data dir and can be released (crash recovery)', async (t) => {
  const root = await mkdtemp(join(workRoot, 'host-'))
  t.after(() => rm(root, { recursive: true, force: true }))
  const dirs = [join(root, 'machines', 'a'), join(root, 'machines', 'b')]
  for (const d of dirs) t.after(() => releaseRootfs(d))
  for (const d of dirs) await prepareRootfs(busybox, d)
  const found = await listRootfsMounts(root)
  assert.deepEqual(found.map((m) => m.machineDir).sort(), dirs)
  assert.deepEqual(found.map((m) => m.manifestDigest), [busybox.manifestDigest, busybox.manifestDigest])
  // The agent knows Machine 'a'; 'b' is a leftover of a Machine destroyed during a crash.
  assert.deepEqual(await sweepRootfsMounts(root, (dir) => dir === dirs[0]), [dirs[1]])
  assert.deepEqual((await listRootfsMounts(root)).map((m) => m.machineDir), [dirs[0]])
  assert.deepEqual(await sweepRootfsMounts(root, () => false), [dirs[0]])
  assert.deepEqual(await listRootfsMounts(root), [])
  assert.deepEqual(await listRootfsMounts(join(root, 'does-not-exist')), [])
  rmSync(join(root, 'machines'), { recursive: true })
})

test('concurrent prepare/reset calls on one Machine are serialised', async (t) => {
  const dir = await machineDir(t)
  await Promise.all([prepareRootfs(busybox, dir), prepareRootfs(busybox, dir), resetRootfs(dir), prepareRootfs(busybox, dir)])
  assert.equal(await isRootfsMounted(dir), true)
  const mounts = execFileSync('findmnt', ['-n', '-o', 'TARGET', '--mountpoint', rootfsPaths(dir).rootfs], { encoding: 'utf8' }).trim().split('\n')
  assert.equal(mounts.length, 1)
})

test('mount cost: prepareRootfs on a fresh Machine dir', async (t) => {
  const samples: number[] = []
  for (let i = 0; i < 10; i++) {
    const dir = await machineDir(t)
    const started = performance.now()
    await prepareRootfs(httpServer, dir)
    samples.push(performance.now() - started)
    await releaseRootfs(dir)
  }
  samples.sort((a, b) => a - b)
  t.diagnostic(`prepareRootfs p50 ${samples[5]!.toFixed(2)} ms, max ${samples[9]!.toFixed(2)} ms (n=10)`)
  assert.ok(samples[5]! < 50, `p50 ${samples[5]} ms`)
})
