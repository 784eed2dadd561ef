import { spawn } from 'node:child_process'
import { rm } from 'node:fs/promises'
import { basename, dirname, join, sep } from 'node:path'
import { ImagePullError } from './errors.js'

// OCI image-spec layer.md "Whiteouts": in a layer tar, `dir/.wh.name` deletes `dir/name` from the
// layers below, and `dir/.wh..wh..opq` makes `dir` opaque (nothing below shows through). Other
// `.wh..wh.` names are AUFS bookkeeping and are dropped. overlayfs spells the same things
// differently (kernel Documentation/filesystems/overlayfs.rst "whiteouts and opaque directories"):
// a deletion is a character device 0/0 with the deleted name, an opaque directory carries the
// xattr trusted.overlay.opaque=y. GNU tar extracts the `.wh.` markers as empty files; this module
// turns them into overlay form in the freshly unpacked layer directory.

export const WHITEOUT_PREFIX = '.wh.'
export const OPAQUE_MARKER = '.wh..wh..opq'

export interface WhiteoutPlan {
  /** Marker files to delete (every `.wh.*` found). */
  markers: string[]
  /** Paths to replace with a 0/0 character device. */
  deletions: string[]
  /** Directories to mark opaque. */
  opaqueDirs: string[]
}

/** Pure: from the `.wh.*` paths found in a layer, what to create and delete. */
export function planWhiteouts(markerPaths: string[]): WhiteoutPlan {
  const plan: WhiteoutPlan = { markers: [], deletions: [], opaqueDirs: [] }
  for (const marker of markerPaths) {
    const name = basename(marker)
    if (!name.startsWith(WHITEOUT_PREFIX)) continue
    plan.markers.push(marker)
    if (name === OPAQUE_MARKER) {
      plan.opaqueDirs.push(dirname(marker))
    } else if (name.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) {
      continue // other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless to overlayfs
    } else {
      const target = name.slice(WHITEOUT_PREFIX.length)
      if (target !== '' && target !== '.' && target !== '..') plan.deletions.push(join(dirname(marker), target))
    }
  }
  return plan
}

/** Finds the `.wh.*` markers under `root` and converts them (one `find`, then at most one `mknod`
 * and one `setfattr` process per batch, and none when the layer has no whiteouts). */
export async function convertWhiteouts(root: string, what: string): Promise<WhiteoutPlan> {
  const found = await run('find', [root, '-name', `${WHITEOUT_PREFIX}*`, '-print0'], what)
  const markers = found.split('\0').filter((p) => p !== '' && p.startsWith(root + sep))
  const plan = planWhiteouts(markers)
  for (const marker of plan.markers) await rm(marker, { force: true, recursive: true })
  // A layer should not hold both `x` and `.wh.x`; if it does, the whiteout wins (it hides x below).
  for (const path of plan.deletions) await rm(path, { force: true, recursive: true })
  for (const batch of batches(plan.deletions, 500)) {
    await run('sh', ['-c', 'for p do mknod -- "$p" c 0 0 || exit 1; done', 'sh', ...batch], what)
  }
  for (const batch of batches(plan.opaqueDirs, 500)) {
    await run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', '--', ...batch], what)
  }
  return plan
}

function batches<T>(items: T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

function run(command: string, args: string[], what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 2048) stderr += d })
    child.on('error', (err) => reject(new ImagePullError('unpack_failed', `${what}: cannot run ${command}: ${err.message}`)))
    child.on('close', (code) => {
      if (code === 0) resolve(stdout)
      else reject(new ImagePullError('unpack_failed', `${what}: converting whiteouts failed (${command} exited ${code}: ${stderr.trim().split('\n')[0] ?? ''})`))
    })
  })
}
