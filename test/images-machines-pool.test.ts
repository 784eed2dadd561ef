import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { mountMachinesPool, unmountMachinesPool } from '../src/images/index.js'
import { isMountpoint } from '../src/core/index.js'

// The machines pool: a sparse, journaled ext4 image loop-mounted at <data>/machines.

const fsTypeOf = (path: string) => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[4] === path)?.at(-3)

test('the pool is made once, mounted at <data>/machines, reused by the next agent, unmounted by down', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'hangar-pool-'))
  t.after(async () => { await unmountMachinesPool(dataDir); rmSync(dataDir, { recursive: true, force: true }) })
  const mountpoint = await mountMachinesPool(dataDir, { sizeGb: 2 })
  assert.equal(mountpoint, join(dataDir, 'machines'))
  assert.ok(isMountpoint(mountpoint))
  assert.equal(fsTypeOf(mountpoint), 'ext4')
  const image = statSync(join(dataDir, 'machines.img'))
  assert.equal(image.size, 2 * 2 ** 30, 'the image is as large as asked')
  assert.ok(image.blocks * 512 < 256 * 2 ** 20, `and sparse (${image.blocks * 512} bytes on disk)`)
  writeFileSync(join(mountpoint, 'kept'), 'x')
  assert.equal(await mountMachinesPool(dataDir, { sizeGb: 2 }), mountpoint, 'a mounted pool is used as it is')
  await unmountMachinesPool(dataDir)
  assert.ok(!isMountpoint(mountpoint))
  await mountMachinesPool(dataDir, { sizeGb: 2 })
  assert.equal(readFileSync(join(mountpoint, 'kept'), 'utf8'), 'x', 'the image keeps what was in it')
})

test('a machines dir that already holds Machines from before pools is used as it is', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'hangar-pool-'))
  t.after(async () => { await unmountMachinesPool(dataDir); rmSync(dataDir, { recursive: true, force: true }) })
  mkdirSync(join(dataDir, 'machines', 'a1b2c3'), { recursive: true })
  const warnings: string[] = []
  const logger = { debug() {}, info() {}, error() {}, warn: (message: string) => { warnings.push(message) }, child() { return logger } }
  assert.equal(await mountMachinesPool(dataDir, { logger }), join(dataDir, 'machines'))
  assert.ok(!isMountpoint(join(dataDir, 'machines')))
  assert.equal(warnings.length, 1)
})

test('a host where the pool cannot be made keeps Machines on the data dir, with a warning', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'hangar-pool-'))
  t.after(async () => { await unmountMachinesPool(dataDir); rmSync(dataDir, { recursive: true, force: true }) })
  // A directory where the image file should be: it can be neither made nor mounted.
  mkdirSync(join(dataDir, 'machines.img'))
  const warnings: string[] = []
  const logger = { debug() {}, info() {}, error() {}, warn: (message: string) => { warnings.push(message) }, child() { return logger } }
  assert.equal(await mountMachinesPool(dataDir, { logger }), join(dataDir, 'machines'))
  assert.ok(!isMountpoint(join(dataDir, 'machines')))
  assert.match(warnings.join('\n'), /no machines pool/)
})
