import { runCommand } from '../core/command.js'
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { mkdir, readdir, realpath, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import { InternalError, InvalidArgumentError } from '../core/index.js'
import { readMountInfo } from './mountinfo.js'

// A Machine's copy-on-write root filesystem (the role LVM thin snapshots play on Fly hosts):
// an overlayfs mount whose lower layers are the image's shared, read-only layer directories and
// whose upper/work directories belong to the Machine alone (host-facts §3: overlayfs works here;
// writes are copied up, deletes leave 0/0 whiteouts in upper). Layout inside the Machine's dir:
//   <machineDir>/rootfs             the mountpoint handed to the runtime
//   <machineDir>/overlay/upper      the Machine's writes
//   <machineDir>/overlay/work       overlayfs scratch space (same filesystem as upper)
//   <machineDir>/overlay/lower/<i>  symlinks to the layer dirs, top layer = 0
//   <machineDir>/overlay/image.json which image the upper dir belongs to
// Mount options must fit in one page (4096 bytes). Full layer paths would not for deep images,
// so `mount` runs with its cwd in overlay/lower and names the layers '0:1:2…' and the upper and
// work dirs '../upper' and '../work' (the kernel resolves relative paths against the caller's
// cwd at mount time and pins what it found). Each mount is tagged with the source name
// 'hangar-rootfs' so crash recovery can find leaked ones in /proc/self/mountinfo.
// Fly resets a Machine's root filesystem when it stops; resetRootfs() is that.
// busybox's mount and umount, not util-linux's: they make the one system call and nothing else,
// where util-linux parses the whole mount table (hundreds of lines with hundreds of Machines) and
// locks its utab on every call: 0.2 ms of CPU per mount instead of 0.5 (umount 0.6 instead of 1.2).

export const ROOTFS_MOUNT_SOURCE = 'hangar-rootfs'
/** overlayfs refuses more lower layers than this (fs/overlayfs: OVL_MAX_STACK). */
const MAX_LOWER_LAYERS = 500

/** What prepareRootfs needs from a PulledImage. */
export interface RootfsImage {
  manifestDigest: string
  /** Bottom layer first. */
  layerDirs: string[]
}

export interface RootfsPaths {
  machineDir: string
  rootfs: string
  overlayDir: string
  upper: string
  work: string
  lower: string
  stateFile: string
}

export interface RootfsMount {
  /** The mountpoint: '<machineDir>/rootfs'. */
  rootfs: string
  machineDir: string
  /** From overlay/image.json, when it is readable. */
  manifestDigest?: string
}

interface RootfsState {
  manifestDigest: string
  layerDirs: string[]
}

export function rootfsPaths(machineDir: string): RootfsPaths {
  const dir = resolve(machineDir)
  const overlayDir = join(dir, 'overlay')
  return {
    machineDir: dir,
    rootfs: join(dir, 'rootfs'),
    overlayDir,
    upper: join(overlayDir, 'upper'),
    work: join(overlayDir, 'work'),
    lower: join(overlayDir, 'lower'),
    stateFile: join(overlayDir, 'image.json'),
  }
}

/** Mounts the Machine's rootfs over the image's layers and returns its path. Idempotent: a rootfs
 * already mounted for the same image is reused as is (with the Machine's writes); one mounted for
 * another image is unmounted and its writes dropped first. Costs one `mount` when not mounted. */
export function prepareRootfs(image: RootfsImage, machineDir: string): Promise<string> {
  const paths = rootfsPaths(machineDir)
  return withMachineLock(paths.machineDir, async () => {
    if (image.layerDirs.length > MAX_LOWER_LAYERS) throw new InvalidArgumentError(`image has ${image.layerDirs.length} layers; overlayfs stacks at most ${MAX_LOWER_LAYERS}`)
    // A Machine's first boot (or the first after a reset): nothing to compare, wipe or reuse —
    // make the dirs with a handful of direct system calls and mount.
    if (!existsSync(paths.overlayDir)) return mountFresh(image, paths)
    await mkdir(paths.rootfs, { recursive: true })
    await mkdir(paths.overlayDir, { recursive: true })
    const state = readState(paths)
    const sameImage = state !== undefined && state.manifestDigest === image.manifestDigest && sameList(state.layerDirs, image.layerDirs)
    if (await isMounted(paths)) {
      if (sameImage) return paths.rootfs
      await unmount(paths.rootfs)
    }
    if (!sameImage) await wipe(paths)
    await mkdir(paths.upper, { recursive: true })
    await mkdir(paths.work, { recursive: true })

    await rm(paths.lower, { recursive: true, force: true })
    await mkdir(paths.lower)
    const layers = linkLowerLayers(image, paths)

    // Recorded before mounting, so a crash right after the mount still knows what is mounted.
    await writeState(paths, { manifestDigest: image.manifestDigest, layerDirs: image.layerDirs })
    await mountOverlay(paths, layers)
    return paths.rootfs
  })
}

/** prepareRootfs for a Machine dir without an overlay dir yet. Crash-safe like the general path:
 * the state file is written (directly: a torn one reads as "no image", which wipes) before the
 * mount, and a rerun after a crash finds the overlay dir and takes the general path. */
async function mountFresh(image: RootfsImage, paths: RootfsPaths): Promise<string> {
  // The overlay dir last of the ones that may be left from an interrupted call: once it exists,
  // reruns take the general path.
  for (const dir of [paths.machineDir, paths.rootfs]) mkdirSync(dir, { recursive: true })
  for (const dir of [paths.overlayDir, paths.upper, paths.work, paths.lower]) mkdirSync(dir)
  const layers = linkLowerLayers(image, paths)
  writeFileSync(paths.stateFile, JSON.stringify({ manifestDigest: image.manifestDigest, layerDirs: image.layerDirs } satisfies RootfsState))
  await mountOverlay(paths, layers)
  return paths.rootfs
}

/** Fills the (empty) lower dir with `0`, `1`, … → the layer dirs, top layer first, and returns
 * how many there are. An image without layers still needs one lower dir: an empty one. */
function linkLowerLayers(image: RootfsImage, paths: RootfsPaths): number {
  const topFirst = [...image.layerDirs].reverse()
  if (topFirst.length === 0) {
    const empty = join(paths.overlayDir, 'empty')
    mkdirSync(empty, { recursive: true })
    topFirst.push(empty)
  }
  topFirst.forEach((dir, i) => symlinkSync(resolve(dir), join(paths.lower, String(i))))
  return topFirst.length
}

function mountOverlay(paths: RootfsPaths, layers: number): Promise<void> {
  const lowerdir = Array.from({ length: layers }, (_, i) => String(i)).join(':')
  return run('busybox', ['mount', '-t', 'overlay', ROOTFS_MOUNT_SOURCE, '-o', `lowerdir=${lowerdir},upperdir=../upper,workdir=../work`, paths.rootfs], paths.lower)
}

/** Unmounts the rootfs and drops the Machine's writes; the next prepareRootfs starts from the image. */
export function resetRootfs(machineDir: string): Promise<void> {
  const paths = rootfsPaths(machineDir)
  return withMachineLock(paths.machineDir, async () => {
    if (await isMounted(paths)) await unmount(paths.rootfs)
    await wipe(paths)
  })
}

/** Unmounts the rootfs but keeps the Machine's writes (a later prepareRootfs with the same image
 * mounts them again). */
export function unmountRootfs(machineDir: string): Promise<void> {
  const paths = rootfsPaths(machineDir)
  return withMachineLock(paths.machineDir, async () => {
    if (await isMounted(paths)) await unmount(paths.rootfs)
  })
}

/** Unmounts the rootfs and deletes everything rootfs-related in the Machine's dir (the rest of the
 * dir belongs to the runtime). Idempotent. */
export function releaseRootfs(machineDir: string): Promise<void> {
  const paths = rootfsPaths(machineDir)
  return withMachineLock(paths.machineDir, async () => {
    if (await isMounted(paths)) await unmount(paths.rootfs)
    await rm(paths.overlayDir, { recursive: true, force: true })
    // rmdir, not rm -r: the mountpoint must be empty now; anything else is not ours to delete.
    await rmdir(paths.rootfs).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
  })
}

/** Whether the Machine's rootfs is mounted now. */
export async function isRootfsMounted(machineDir: string): Promise<boolean> {
  return isMounted(rootfsPaths(machineDir))
}

/** Every Hangar rootfs mounted under `root` (e.g. the agent's machines dir), from mountinfo: what
 * crash recovery compares with the Machines it knows, releasing the leftovers. */
export async function listRootfsMounts(root: string): Promise<RootfsMount[]> {
  let base: string
  try {
    base = await realpath(root)
  } catch {
    return []
  }
  const mounts = await readMountInfo()
  const seen = new Set<string>()
  const out: RootfsMount[] = []
  for (const m of mounts) {
    if (m.fstype !== 'overlay' || m.source !== ROOTFS_MOUNT_SOURCE) continue
    if (!(m.mountpoint === base || m.mountpoint.startsWith(base + sep))) continue
    if (seen.has(m.mountpoint)) continue // stacked twice: one entry, unmount() peels them all
    seen.add(m.mountpoint)
    const machineDir = dirname(m.mountpoint)
    const mount: RootfsMount = { rootfs: m.mountpoint, machineDir }
    const state = readState(rootfsPaths(machineDir))
    if (state) mount.manifestDigest = state.manifestDigest
    out.push(mount)
  }
  return out
}

/** Crash recovery in one call: releases every Hangar rootfs mounted under `root` whose Machine dir
 * `keep` does not claim, and returns the Machine dirs it released. */
export async function sweepRootfsMounts(root: string, keep: (machineDir: string) => boolean): Promise<string[]> {
  const released: string[] = []
  for (const mount of await listRootfsMounts(root)) {
    if (keep(mount.machineDir)) continue
    await releaseRootfs(mount.machineDir)
    released.push(mount.machineDir)
  }
  return released
}

// ---- internals ----

const locks = new Map<string, Promise<unknown>>()

/** Serialises operations on one Machine's rootfs within this process. */
function withMachineLock<T>(key: string, job: () => Promise<T>): Promise<T> {
  const previous = locks.get(key) ?? Promise.resolve()
  const next = previous.catch(() => {}).then(job)
  const tail = next.catch(() => {})
  locks.set(key, tail)
  void tail.then(() => { if (locks.get(key) === tail) locks.delete(key) })
  return next
}

/** A mount on the rootfs dir shows as a device different from its parent's. */
async function isMounted(paths: RootfsPaths): Promise<boolean> {
  try {
    const [mountpoint, parent] = await Promise.all([stat(paths.rootfs), stat(paths.machineDir)])
    return mountpoint.dev !== parent.dev
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

async function unmount(rootfs: string): Promise<void> {
  const parent = dirname(rootfs)
  for (let i = 0; i < 8; i++) {
    try {
      await run('busybox', ['umount', rootfs])
    } catch (err) {
      // Busy: a process still has a file open inside. Detach it now; the kernel frees it when the
      // last user goes (the Machine is stopped, so that is a straggler, not the guest).
      await run('busybox', ['umount', '-l', rootfs]).catch(() => { throw err })
    }
    const [a, b] = await Promise.all([stat(rootfs), stat(parent)])
    if (a.dev === b.dev) return
  }
  throw new InternalError(`could not unmount ${rootfs}: still mounted after 8 attempts`)
}

/** Drops the Machine's writes: upper is renamed away first so a crash mid-delete never leaves a
 * half-deleted upper dir that a later mount would use. */
async function wipe(paths: RootfsPaths): Promise<void> {
  await rm(paths.stateFile, { force: true })
  for (const dir of [paths.upper, paths.work]) {
    const doomed = `${dir}.deleting-${process.pid}-${Date.now()}`
    try {
      await rename(dir, doomed)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue
      throw err
    }
    await rm(doomed, { recursive: true, force: true })
  }
  await rm(paths.lower, { recursive: true, force: true })
  // Leftovers of a wipe that a crash interrupted.
  for (const entry of await readdir(paths.overlayDir).catch(() => [] as string[])) {
    if (entry.includes('.deleting-')) await rm(join(paths.overlayDir, entry), { recursive: true, force: true })
  }
}

function readState(paths: RootfsPaths): RootfsState | undefined {
  try {
    const state = JSON.parse(readFileSync(paths.stateFile, 'utf8')) as RootfsState
    if (typeof state.manifestDigest === 'string' && Array.isArray(state.layerDirs)) return state
  } catch {
    // absent or unreadable: treated as "no image recorded"
  }
  return undefined
}

async function writeState(paths: RootfsPaths, state: RootfsState): Promise<void> {
  const tmp = `${paths.stateFile}.tmp-${process.pid}`
  await writeFile(tmp, JSON.stringify(state))
  await rename(tmp, paths.stateFile)
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i])
}

async function run(command: string, args: string[], cwd?: string): Promise<void> {
  const result = await runCommand(command, args, { cwd, timeoutMs: 30_000, allowFailure: true }).catch((err: Error) => ({ code: -1, stderr: err.message, stdout: '' }))
  if (result.code === 0) return
  const detail = (result.stderr || `exit ${result.code}`).trim().split('\n')[0]
  throw new InternalError(`${command} ${args.join(' ')} failed: ${detail}`)
}
