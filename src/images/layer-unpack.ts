import { spawn, type ChildProcess } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { chmod, mkdtemp, open, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { Writable, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip } from 'node:zlib'
import { ImagePullError } from './errors.js'
import { DigestAccumulator, assertDigest } from './digest.js'
import { convertWhiteouts } from './whiteouts.js'
import type { LayerCompression } from './manifest.js'

// A layer is unpacked once into its own directory, named by its diff_id (the sha256 of the
// uncompressed tar, from the image config). The compressed blob has already been verified
// against its digest before we get here, so no unverified byte reaches gunzip or tar; the
// uncompressed stream is hashed again on its way into GNU tar and must match the diff_id.
// Everything happens in a temporary directory that is renamed into place only when complete:
// a crash leaves garbage in tmp/, never a half-unpacked layer that looks finished.
//
// GNU tar does the writing because it gets ownership, modes, hard links, devices, sparse files
// and xattrs right, quickly. As root it keeps owners and permissions by default; we add
// --numeric-owner (the image's uids, not this host's /etc/passwd) and keep only the xattrs an
// image may legitimately carry (file capabilities, user.*), never trusted.overlay.* ones, which
// would let a layer forge overlay metadata. tar refuses members with '..' and strips leading '/',
// and it defers symlinks to absolute or '..' targets until the end, so a layer cannot write
// through a symlink outside its own directory.

const GZIP_MAGIC = [0x1f, 0x8b]
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd]

export interface UnpackLayerRequest {
  /** The verified compressed blob. */
  blobPath: string
  /** From the media type; the blob's magic bytes decide in the end. */
  declaredCompression: LayerCompression
  diffId: string
  /** Where the finished layer goes (must not exist yet). */
  targetDir: string
  /** A directory on the same filesystem for work in progress. */
  tmpRoot: string
  /** Names the layer in messages: 'image "x": layer sha256:…'. */
  what: string
  signal?: AbortSignal
}

/** Unpacks a layer; resolves once `targetDir` holds it (also when another process won the race). */
export async function unpackLayer(request: UnpackLayerRequest): Promise<void> {
  const work = await mkdtemp(join(request.tmpRoot, `${process.pid}-layer-`))
  try {
    // mkdtemp makes 0700; a layer root without its own './' entry must still be world-readable.
    await chmod(work, 0o755)
    await extract(request, work)
    await convertWhiteouts(work, request.what)
    try {
      await rename(work, request.targetDir)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'EEXIST' && code !== 'ENOTEMPTY') throw err
      // Someone else finished the same layer first; theirs is as good as ours.
      await rm(work, { recursive: true, force: true })
    }
  } catch (err) {
    await rm(work, { recursive: true, force: true }).catch(() => {})
    throw err
  }
}

export async function sniffCompression(path: string): Promise<LayerCompression> {
  const handle = await open(path, 'r')
  try {
    const head = Buffer.alloc(4)
    const { bytesRead } = await handle.read(head, 0, 4, 0)
    const starts = (magic: number[]) => bytesRead >= magic.length && magic.every((b, i) => head[i] === b)
    if (starts(GZIP_MAGIC)) return 'gzip'
    if (starts(ZSTD_MAGIC)) return 'zstd'
    return 'none'
  } finally {
    await handle.close()
  }
}

async function extract(request: UnpackLayerRequest, work: string): Promise<void> {
  const { what, signal } = request
  const compression = await sniffCompression(request.blobPath)
  const children: ChildProcess[] = []
  const killAll = () => { for (const c of children) if (c.exitCode === null) c.kill('SIGKILL') }
  signal?.addEventListener('abort', killAll, { once: true })
  try {
    const tar = spawn('tar', [
      '--extract', '--file=-', `--directory=${work}`,
      '--numeric-owner', '--same-owner', '--same-permissions',
      '--xattrs', '--xattrs-include=security.capability', '--xattrs-include=user.*',
      '--no-overwrite-dir', '--warning=no-timestamp', '--warning=no-unknown-keyword',
    ], { stdio: ['pipe', 'ignore', 'pipe'] })
    children.push(tar)
    const tarExit = exitOf(tar, 'tar', what)
    tarExit.catch(() => {}) // awaited below; this only keeps an early failure from being "unhandled"

    let source: Readable
    let sourceExit: Promise<{ code: number | null; stderr: string }> | undefined
    if (compression === 'zstd') {
      const zstd = spawn('zstd', ['--decompress', '--stdout', '--quiet', request.blobPath], { stdio: ['ignore', 'pipe', 'pipe'] })
      children.push(zstd)
      sourceExit = exitOf(zstd, 'zstd', what)
      sourceExit.catch(() => {})
      source = zstd.stdout
    } else if (compression === 'gzip') {
      source = createReadStream(request.blobPath).pipe(createGunzip())
    } else {
      source = createReadStream(request.blobPath)
    }

    const diff = new DigestAccumulator(request.diffId)
    let tarStopped = false
    tar.stdin.on('error', () => { tarStopped = true }) // EPIPE: tar stopped at the end-of-archive blocks
    const intoTar = new Writable({
      highWaterMark: 1 << 20,
      write(chunk: Buffer, _encoding, callback) {
        // The diff_id covers the whole stream, padding included, even after tar has stopped reading.
        diff.update(chunk)
        if (tarStopped || tar.stdin.destroyed) return callback()
        if (tar.stdin.write(chunk)) return callback()
        const resume = () => { tar.stdin.off('drain', resume); tar.stdin.off('close', resume); callback() }
        tar.stdin.on('drain', resume)
        tar.stdin.on('close', resume)
      },
      final(callback) { tar.stdin.end(); callback() },
    })

    try {
      await pipeline(source, intoTar, signal ? { signal } : {})
    } catch (err) {
      killAll()
      if (signal?.aborted) throw err
      if (compression === 'zstd' && (err as NodeJS.ErrnoException).code === 'ENOENT') throw zstdMissing(what)
      throw new ImagePullError('invalid_image', `${what}: the layer could not be decompressed (${compression}): ${(err as Error).message}`)
    }
    if (sourceExit) {
      const { code, stderr } = await sourceExit
      if (code !== 0) throw new ImagePullError('invalid_image', `${what}: zstd could not decompress the layer: ${firstLine(stderr)}`)
    }
    const { code, stderr } = await tarExit
    assertDigest(`${what} uncompressed content (diff_id)`, request.diffId, diff.digest())
    if (code !== 0) throw new ImagePullError('unpack_failed', `${what}: tar could not unpack the layer: ${firstLine(stderr)}`)
  } finally {
    signal?.removeEventListener('abort', killAll)
    killAll()
  }
}

function exitOf(child: ChildProcess, name: string, what: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    let stderr = ''
    child.stderr?.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 4096) stderr += d })
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (name === 'zstd' && err.code === 'ENOENT') reject(zstdMissing(what))
      else reject(new ImagePullError('unpack_failed', `${what}: cannot run ${name}: ${err.message}`))
    })
    child.on('close', (code) => resolve({ code, stderr }))
  })
}

function zstdMissing(what: string): ImagePullError {
  return new ImagePullError('unsupported', `${what} is zstd-compressed and this host has no zstd decompressor (install the Debian package "zstd")`)
}

/** The informative part of a tool's stderr: tar's notices ("Removing leading '/'") and its closing
 * "Exiting with failure status" line are skipped. */
function firstLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !/Removing leading|Exiting with failure status/.test(l))
  return lines.slice(0, 2).join('; ') || 'no message'
}
