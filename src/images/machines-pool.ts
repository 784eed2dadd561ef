import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, renameSync, statfsSync } from 'node:fs'
import { join } from 'node:path'
import { runCommand } from '../core/command.js'
import { InternalError, isMountpoint, type Logger, silentLogger } from '../core/index.js'

// The host's pool for Machines' writable layers (Fly keeps each Machine's rootfs in an LVM thin
// pool; this is Hangar's): a sparse image file `<dataDir>/machines.img`, ext4 *with a journal*,
// loop-mounted at `<dataDir>/machines`, where every Machine's overlay upper/work dirs and log live.
//
// Why not the data dir's own filesystem: Machines make and delete a few dozen inodes per boot
// (their dirs, overlayfs's work files, the mountpoints crun creates), and on ext4 *without* a
// journal — the root filesystem of this kind of host — every inode allocation first skips the
// inodes freed in the last minutes, reading each one's inode-table block: with Machines coming
// and going that scan was a third of the host's CPU in a burst of creates. A journaled ext4 of
// our own has no such scan, whatever the host's disk is; and it bounds what Machines can write.
// Its contents are as ephemeral as a Machine's rootfs (a stop wipes it), so the pool needs no
// migration: `hangar down` unmounts it, the next agent mounts it again.

const IMAGE = 'machines.img'
const MOUNTPOINT = 'machines'
const DEFAULT_SIZE_GB = 64

export interface MachinesPoolOptions {
  /** Largest size of the sparse image; capped at 80% of the data dir's free space when made. */
  sizeGb?: number
  logger?: Logger
}

/** Mounts the pool at `<dataDir>/machines` (making the image on first use) and returns that path.
 * Idempotent: a pool an earlier agent mounted is used as it is. A data dir whose `machines` dir
 * already holds Machines from before pools were used keeps using it, unpooled; so does a host
 * where the image cannot be made or loop-mounted (with a warning in the agent's log). */
export async function mountMachinesPool(dataDir: string, options: MachinesPoolOptions = {}): Promise<string> {
  const logger = options.logger ?? silentLogger
  const mountpoint = join(dataDir, MOUNTPOINT)
  if (isMountpoint(mountpoint)) return mountpoint
  mkdirSync(mountpoint, { recursive: true })
  if (readdirSync(mountpoint).length > 0) {
    logger.warn('machines dir is not empty and not a pool: Machines keep their writable layers there', { dir: mountpoint })
    return mountpoint
  }
  const image = join(dataDir, IMAGE)
  try {
    if (!existsSync(image)) await makePoolImage(image, dataDir, options.sizeGb ?? DEFAULT_SIZE_GB)
    const mounted = await runCommand('mount', ['-o', 'loop,discard,noatime', image, mountpoint], { allowFailure: true, timeoutMs: 60_000 })
    if (mounted.code !== 0) throw new InternalError(`cannot mount ${image} at ${mountpoint}: ${mounted.stderr.trim()}`)
  } catch (err) {
    // A host without loop devices (some containers) still runs Machines, on the data dir's disk.
    logger.warn('no machines pool: Machines keep their writable layers on the data dir\'s filesystem', { err })
    return mountpoint
  }
  logger.info('machines pool mounted', { image, mountpoint })
  return mountpoint
}

/** Unmounts the pool (its loop device goes with it); the image stays for the next agent. */
export async function unmountMachinesPool(dataDir: string): Promise<void> {
  const mountpoint = join(dataDir, MOUNTPOINT)
  if (!isMountpoint(mountpoint)) return
  const result = await runCommand('umount', [mountpoint], { allowFailure: true, timeoutMs: 60_000 })
  if (result.code !== 0) await runCommand('umount', ['--lazy', mountpoint], { allowFailure: true })
}

async function makePoolImage(image: string, dataDir: string, sizeGb: number): Promise<void> {
  const free = (() => { try { const s = statfsSync(dataDir); return s.bavail * s.bsize } catch { return Infinity } })()
  const bytes = Math.max(1 << 30, Math.min(sizeGb * 2 ** 30, Math.floor(free * 0.8)))
  const partial = `${image}.making`
  const fd = openSync(partial, 'w', 0o600)
  try { ftruncateSync(fd, bytes) } finally { closeSync(fd) }
  // One inode per 64 KiB, a 64 MiB journal, both initialised lazily: the image starts at a few MB.
  const made = await runCommand('mkfs.ext4', ['-q', '-F', '-m', '0', '-i', '65536', '-J', 'size=64', '-L', 'hangar-machines', '-E', 'lazy_itable_init=1,lazy_journal_init=1', partial], { allowFailure: true, timeoutMs: 120_000 })
  if (made.code !== 0) throw new InternalError(`cannot make the machines pool (mkfs.ext4, package e2fsprogs): ${made.stderr.trim()}`)
  renameSync(partial, image)
}
