import { createWriteStream, existsSync, readFileSync, readdirSync } from 'node:fs'
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { UnavailableError, silentLogger, type ImageRef, type Logger } from '../core/index.js'
import { ImagePullError, isImagePullError } from './errors.js'
import { DigestAccumulator, assertDigest, digestOf, isDigest, parseDigest } from './digest.js'
import { formatImageReference, parseImageReference, type ImageReference } from './reference.js'
import {
  MAX_CONFIG_BYTES, formatPlatform, hostPlatform, layerCompression, parseImageConfig, parseManifest, selectPlatformManifest,
  type Descriptor, type ImageManifest, type ImageRuntimeConfig, type ParsedManifest, type Platform,
} from './manifest.js'
import { RegistryClient, type CredentialsProvider, type PullTarget } from './registry-client.js'
import { SingleFlight, waitUnlessAborted } from './single-flight.js'
import { unpackLayer } from './layer-unpack.js'

// The content store (containerd's role on a Fly host). On disk, under dataDir:
//   blobs/<alg>/<hex>              verified blobs: manifests, indexes, configs, compressed layers
//   layers/<alg>/<diff-hex>/       unpacked layers, named by diff_id, shared by every Machine
//   refs/<registry>/<repo>/_tags/<tag>   the digest a tag last resolved to (for get() and HEAD checks)
//   tmp/<pid>-…                    work in progress, renamed into place only when complete
// (`_tags` cannot collide with a repository path component: those start with [a-z0-9].)
//
// Pulls are single-flight at three levels: a whole pull per reference, a blob per digest, an
// unpack per diff_id — so concurrent pulls of one image, or of images sharing a base layer, fetch
// and unpack each layer once. Caching policy (what a cached pull costs):
//   - by digest ('app@sha256:…'): no network at all when the image is complete on disk;
//   - by tag: one `HEAD /v2/<name>/manifests/<tag>`; if its Docker-Content-Digest is complete on
//     disk, that is the answer (tags move, so they are re-resolved, as `docker pull` does) —
//     except that a tag this store resolved less than `tagReuseMs` (1 s) ago is not asked again: a
//     burst of creates from one image costs one HEAD per second, not one per Machine.
// Use get() to look up a cached image without any network.

export interface ImageStoreOptions {
  /** Root of the content store, e.g. '<host data>/images'. Created if missing. */
  dataDir: string
  logger?: Logger
  /** Registries ('host:port' or 'host') reached over plain HTTP; loopback registries always are. */
  insecureRegistries?: string[]
  /** Credentials per registry ('docker.io', '127.0.0.1:5000'); undefined means anonymous. */
  credentials?: CredentialsProvider
  /** The platform picked from manifest lists; defaults to this host's (linux/amd64 here). */
  platform?: Platform
  /** How many layers of one image download and unpack at once (default 4). */
  layerConcurrency?: number
  /** How long a tag's resolution is reused without a HEAD (default TAG_REUSE_MS; 0: always ask). */
  tagReuseMs?: number
  /** Aborting it aborts pulls in flight and closes the store. */
  signal?: AbortSignal
}

export interface PulledLayer {
  /** Digest of the compressed blob. */
  digest: string
  /** Digest of the uncompressed tar (names the unpacked directory). */
  diffId: string
  size: number
  mediaType: string
  /** The unpacked layer, read-only by convention (never write into it). */
  dir: string
}

export interface PulledImage {
  /** The canonical reference that was pulled, e.g. 'docker.io/library/busybox:latest'. */
  ref: string
  /** What the reference resolved to in the registry (a manifest list/index digest for multi-platform images). */
  digest: string
  /** The image manifest for this host's platform. */
  manifestDigest: string
  configDigest: string
  /** Fly's image_ref for the Machine record (wire.ts). */
  imageRef: ImageRef
  config: ImageRuntimeConfig
  platform: Platform
  /** Bottom layer first (the manifest's order). */
  layers: PulledLayer[]
  /** Unpacked layer directories, bottom layer first. */
  layerDirs: string[]
  /** Sum of the compressed layer sizes. */
  size: number
}

/** The reference-independent part of a pulled image, memoised by the digest a reference resolves to. */
interface ImageContent {
  digest: string
  manifestDigest: string
  configDigest: string
  config: ImageRuntimeConfig
  platform: Platform
  layers: PulledLayer[]
}

export interface PullOptions {
  /** Stops this caller waiting; the shared download goes on for other callers and the cache. */
  signal?: AbortSignal
}

const MAX_INDEX_DEPTH = 2
/** How long a tag's resolution is reused without asking the registry again. Short enough that a
 * tag pushed and then run a moment later is seen (deploys use a fresh tag anyway). */
export const TAG_REUSE_MS = 1_000

export class ImageStore {
  readonly dataDir: string
  private readonly logger: Logger
  private readonly client: RegistryClient
  private readonly platform: Platform
  private readonly layerConcurrency: number
  private readonly tagReuseMs: number
  private readonly pulls = new SingleFlight<ImageContent>()
  private readonly blobFlights = new SingleFlight<string>()
  private readonly layerFlights = new SingleFlight<string>()
  private readonly contents = new Map<string, ImageContent>()
  /** Tags resolved recently: reference → digest and when (performance.now()). */
  private readonly resolvedTags = new Map<string, { digest: string; at: number }>()
  private readonly stopAll = new AbortController()
  private readonly ready: Promise<void>
  private closing: Promise<void> | undefined

  constructor(options: ImageStoreOptions) {
    this.dataDir = options.dataDir
    this.logger = options.logger ?? silentLogger
    this.platform = options.platform ?? hostPlatform()
    this.layerConcurrency = Math.max(1, options.layerConcurrency ?? 4)
    this.tagReuseMs = options.tagReuseMs ?? TAG_REUSE_MS
    this.client = new RegistryClient({ insecureRegistries: options.insecureRegistries ?? [], credentials: options.credentials, logger: this.logger })
    if (options.signal) {
      if (options.signal.aborted) this.stopAll.abort(options.signal.reason)
      else options.signal.addEventListener('abort', () => { this.stopAll.abort(options.signal?.reason); void this.close() }, { once: true })
    }
    this.ready = this.prepareDirs()
    this.ready.catch(() => {}) // surfaced by the first pull
  }

  /** Pulls an image (or finds it in the cache; see the policy above) and returns it unpacked. */
  async pull(ref: string, options: PullOptions = {}): Promise<PulledImage> {
    if (this.closing) throw new UnavailableError('the image store is closed')
    const reference = parseImageReference(ref)
    const canonical = formatImageReference(reference)
    const content = await waitUnlessAborted(this.pulls.run(canonical, () => this.pullContent(reference, canonical)), options.signal)
    return this.toPulledImage(reference, content)
  }

  /** The image a reference names if it is complete in the cache; never touches the network. */
  get(ref: string): PulledImage | undefined {
    const reference = parseImageReference(ref)
    const digest = reference.digest ?? this.readTag(reference)
    if (!digest) return undefined
    const content = this.loadContent(digest, formatImageReference(reference))
    return content ? this.toPulledImage(reference, content) : undefined
  }

  /** Finishes pulls in flight, then releases the HTTP connections. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.pulls.drain()
      await this.client.close()
    })()
    return this.closing
  }

  blobPath(digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return join(this.dataDir, 'blobs', algorithm, hex)
  }

  layerPath(diffId: string): string {
    const { algorithm, hex } = parseDigest(diffId)
    return join(this.dataDir, 'layers', algorithm, hex)
  }

  private get tmpDir(): string { return join(this.dataDir, 'tmp') }

  private tagPath(reference: ImageReference): string {
    return join(this.dataDir, 'refs', reference.registry, reference.repository, '_tags', reference.tag ?? 'latest')
  }

  private async prepareDirs(): Promise<void> {
    for (const dir of ['blobs/sha256', 'blobs/sha512', 'layers/sha256', 'layers/sha512', 'refs', 'tmp']) {
      await mkdir(join(this.dataDir, dir), { recursive: true })
    }
    // Leftovers of a process that died mid-pull (named '<pid>-…'); a live process's work is kept.
    for (const entry of await readdir(this.tmpDir)) {
      const pid = Number(entry.split('-')[0])
      if (pid === process.pid || (Number.isInteger(pid) && pid > 0 && isAlive(pid))) continue
      await rm(join(this.tmpDir, entry), { recursive: true, force: true }).catch(() => {})
    }
  }

  private async pullContent(reference: ImageReference, display: string): Promise<ImageContent> {
    await this.ready
    const started = performance.now()
    const signal = this.stopAll.signal
    const target: PullTarget = { reference, display }

    let topDigest = reference.digest
    if (topDigest !== undefined) {
      parseDigest(topDigest, `image "${display}": digest`)
      const cached = this.loadContent(topDigest, display)
      if (cached) return cached
    } else {
      const recent = this.resolvedTags.get(display)
      if (recent && performance.now() - recent.at < this.tagReuseMs) {
        const cached = this.loadContent(recent.digest, display)
        if (cached) return cached
      }
      // A registry that answers HEAD oddly (405, or no Docker-Content-Digest) gets a plain GET below.
      const head = await this.client.headManifest(target, reference.tag ?? 'latest', signal).catch((err: unknown) => {
        if (isImagePullError(err, 'registry_error')) return { digest: undefined }
        throw err
      })
      if (head.digest !== undefined && isDigest(head.digest)) {
        topDigest = head.digest
        const cached = this.loadContent(topDigest, display)
        if (cached) {
          await this.writeTag(reference, topDigest)
          this.resolvedTags.set(display, { digest: topDigest, at: performance.now() })
          this.logger.debug('image cached', { ref: display, digest: topDigest, ms: round(performance.now() - started) })
          return cached
        }
      }
    }

    const top = await this.fetchManifest(target, topDigest ?? reference.tag ?? 'latest', topDigest)
    const manifests: Array<{ digest: string; bytes: Buffer }> = [{ digest: top.digest, bytes: top.bytes }]
    let current: { digest: string; parsed: ParsedManifest } = top
    for (let depth = 0; current.parsed.kind === 'index'; depth++) {
      if (depth >= MAX_INDEX_DEPTH) throw new ImagePullError('invalid_image', `image "${display}": manifest lists nest more than ${MAX_INDEX_DEPTH} deep`)
      const chosen = selectPlatformManifest(current.parsed, this.platform)
      if (!chosen) {
        const available = current.parsed.manifests.flatMap((m) => (m.platform ? [formatPlatform(m.platform)] : [])).filter((p) => p !== 'unknown/unknown')
        throw new ImagePullError('no_matching_platform', `image "${display}" has no ${formatPlatform(this.platform)} variant (available: ${available.join(', ') || 'none'})`)
      }
      const child = await this.fetchManifest(target, chosen.digest, chosen.digest)
      if (child.bytes.length !== chosen.size) throw new ImagePullError('size_mismatch', `image "${display}": manifest ${chosen.digest} is ${child.bytes.length} bytes, the manifest list says ${chosen.size}`)
      manifests.push({ digest: child.digest, bytes: child.bytes })
      current = child
    }
    const manifest = current.parsed as ImageManifest

    const configPath = await this.ensureBlob(target, manifest.config, 'config')
    if (manifest.config.size > MAX_CONFIG_BYTES) throw new ImagePullError('invalid_image', `image "${display}": config is larger than ${MAX_CONFIG_BYTES} bytes`)
    const config = parseImageConfig(readFileSync(configPath), `image "${display}": config ${manifest.config.digest}`)
    if (config.diffIds.length !== manifest.layers.length) {
      throw new ImagePullError('invalid_image', `image "${display}": the manifest lists ${manifest.layers.length} layers but the config lists ${config.diffIds.length} diff_ids`)
    }
    if (config.architecture && config.os && (config.architecture !== this.platform.architecture || config.os !== this.platform.os)) {
      throw new ImagePullError('no_matching_platform', `image "${display}" is ${config.os}/${config.architecture}, this host runs ${formatPlatform(this.platform)}`)
    }
    manifest.layers.forEach((layer, i) => layerCompression(layer, `image "${display}": layer ${i} (${layer.digest})`))

    const layers = await mapLimit(manifest.layers, this.layerConcurrency, (descriptor, i) => this.ensureLayer(target, descriptor, config.diffIds[i]!, i))

    // Only now, with every layer in place, do the manifests and the tag become visible.
    for (const m of manifests) await this.writeBlob(m.digest, m.bytes)
    if (reference.tag !== undefined && reference.digest === undefined) {
      await this.writeTag(reference, top.digest)
      this.resolvedTags.set(display, { digest: top.digest, at: performance.now() })
    }

    const content: ImageContent = {
      digest: top.digest,
      manifestDigest: current.digest,
      configDigest: manifest.config.digest,
      config: config.runtime,
      platform: { os: config.os ?? this.platform.os, architecture: config.architecture ?? this.platform.architecture, ...(config.variant ? { variant: config.variant } : {}) },
      layers,
    }
    this.contents.set(content.digest, content)
    this.logger.info('image pulled', { ref: display, digest: content.digest, layers: layers.length, bytes: layers.reduce((n, l) => n + l.size, 0), ms: round(performance.now() - started) })
    return content
  }

  /** Fetches and verifies a manifest (from disk when its digest is known and stored). */
  private async fetchManifest(target: PullTarget, reference: string, expectedDigest: string | undefined): Promise<{ digest: string; bytes: Buffer; parsed: ParsedManifest }> {
    const what = `image "${target.display}": manifest`
    if (expectedDigest !== undefined) {
      const path = this.blobPath(expectedDigest)
      if (existsSync(path)) {
        const bytes = readFileSync(path)
        return { digest: expectedDigest, bytes, parsed: parseManifest(bytes, undefined, `${what} ${expectedDigest}`) }
      }
    }
    const response = await this.client.getManifest(target, reference, this.stopAll.signal)
    const claimed = expectedDigest ?? (response.digestHeader !== undefined && isDigest(response.digestHeader) ? response.digestHeader : undefined)
    const digest = digestOf(response.bytes, claimed ? parseDigest(claimed).algorithm : 'sha256')
    if (claimed !== undefined) assertDigest(what, claimed, digest)
    return { digest, bytes: response.bytes, parsed: parseManifest(response.bytes, response.contentType, `${what} ${digest}`) }
  }

  /** A verified blob on disk, downloading it once however many callers ask. */
  private async ensureBlob(target: PullTarget, descriptor: Descriptor, kind: string): Promise<string> {
    const path = this.blobPath(descriptor.digest)
    if (existsSync(path)) return path
    return this.blobFlights.run(descriptor.digest, async () => {
      if (existsSync(path)) return path
      const what = `image "${target.display}": ${kind} ${descriptor.digest}`
      const tmp = join(this.tmpDir, `${process.pid}-blob-${randomBytes(6).toString('hex')}`)
      try {
        const response = await this.client.getBlob(target, descriptor.digest, this.stopAll.signal)
        if (response.contentLength !== undefined && response.contentLength !== descriptor.size) {
          response.body.destroy()
          throw new ImagePullError('size_mismatch', `${what} is ${response.contentLength} bytes in the registry, the manifest says ${descriptor.size}`)
        }
        const accumulator = new DigestAccumulator(descriptor.digest)
        const verify = new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            accumulator.update(chunk)
            if (accumulator.bytes > descriptor.size) return callback(new ImagePullError('size_mismatch', `${what} is longer than the ${descriptor.size} bytes the manifest says`))
            callback(null, chunk)
          },
        })
        await pipeline(response.body, verify, createWriteStream(tmp), { signal: this.stopAll.signal })
        if (accumulator.bytes !== descriptor.size) throw new ImagePullError('size_mismatch', `${what} is ${accumulator.bytes} bytes, the manifest says ${descriptor.size}`)
        assertDigest(what, descriptor.digest, accumulator.digest())
        await rename(tmp, path)
        return path
      } catch (err) {
        await rm(tmp, { force: true }).catch(() => {})
        throw err
      }
    })
  }

  private async ensureLayer(target: PullTarget, descriptor: Descriptor, diffId: string, index: number): Promise<PulledLayer> {
    const dir = this.layerPath(diffId)
    const layer: PulledLayer = { digest: descriptor.digest, diffId, size: descriptor.size, mediaType: descriptor.mediaType, dir }
    if (existsSync(dir)) return layer
    await this.layerFlights.run(diffId, async () => {
      if (existsSync(dir)) return dir
      const what = `image "${target.display}": layer ${index} (${descriptor.digest})`
      const hadBlob = existsSync(this.blobPath(descriptor.digest))
      const blobPath = await this.ensureBlob(target, descriptor, `layer ${index}`)
      try {
        await unpackLayer({ blobPath, declaredCompression: layerCompression(descriptor, what), diffId, targetDir: dir, tmpRoot: this.tmpDir, what, signal: this.stopAll.signal })
      } catch (err) {
        // The blob is intact but belongs to an image we could not use: do not keep what we fetched for it.
        if (!hadBlob) await rm(blobPath, { force: true }).catch(() => {})
        throw err
      }
      return dir
    })
    return layer
  }

  private async writeBlob(digest: string, bytes: Buffer): Promise<void> {
    const path = this.blobPath(digest)
    if (existsSync(path)) return
    await atomicWrite(this.tmpDir, path, bytes)
  }

  private async writeTag(reference: ImageReference, digest: string): Promise<void> {
    const path = this.tagPath(reference)
    if (this.readTag(reference) === digest) return
    await mkdir(join(path, '..'), { recursive: true })
    await atomicWrite(this.tmpDir, path, digest + '\n')
  }

  private readTag(reference: ImageReference): string | undefined {
    try {
      const digest = readFileSync(this.tagPath(reference), 'utf8').trim()
      return isDigest(digest) ? digest : undefined
    } catch {
      return undefined
    }
  }

  /** The image a digest names, if it is complete on disk (memoised). Synchronous: a few small reads. */
  private loadContent(digest: string, display: string): ImageContent | undefined {
    const memo = this.contents.get(digest)
    if (memo) return memo
    try {
      if (!isDigest(digest)) return undefined
      let manifestDigest = digest
      let parsed = this.readStoredManifest(digest, display)
      for (let depth = 0; parsed?.kind === 'index'; depth++) {
        const chosen = depth < MAX_INDEX_DEPTH ? selectPlatformManifest(parsed, this.platform) : undefined
        if (!chosen) return undefined
        manifestDigest = chosen.digest
        parsed = this.readStoredManifest(chosen.digest, display)
      }
      if (!parsed) return undefined
      const configPath = this.blobPath(parsed.config.digest)
      if (!existsSync(configPath)) return undefined
      const config = parseImageConfig(readFileSync(configPath), `image "${display}": config`)
      if (config.diffIds.length !== parsed.layers.length) return undefined
      const layers: PulledLayer[] = []
      for (const [i, descriptor] of parsed.layers.entries()) {
        const diffId = config.diffIds[i]!
        const dir = this.layerPath(diffId)
        if (!existsSync(dir)) return undefined
        layers.push({ digest: descriptor.digest, diffId, size: descriptor.size, mediaType: descriptor.mediaType, dir })
      }
      const content: ImageContent = {
        digest,
        manifestDigest,
        configDigest: parsed.config.digest,
        config: config.runtime,
        platform: { os: config.os ?? this.platform.os, architecture: config.architecture ?? this.platform.architecture, ...(config.variant ? { variant: config.variant } : {}) },
        layers,
      }
      this.contents.set(digest, content)
      return content
    } catch (err) {
      this.logger.warn('cached image unreadable; it will be pulled again', { ref: display, digest, error: err as Error })
      return undefined
    }
  }

  private readStoredManifest(digest: string, display: string): ParsedManifest | undefined {
    const path = this.blobPath(digest)
    if (!existsSync(path)) return undefined
    return parseManifest(readFileSync(path), undefined, `image "${display}": manifest ${digest}`)
  }

  private toPulledImage(reference: ImageReference, content: ImageContent): PulledImage {
    return {
      ref: formatImageReference(reference),
      digest: content.digest,
      manifestDigest: content.manifestDigest,
      configDigest: content.configDigest,
      imageRef: {
        registry: reference.registry,
        repository: reference.repository,
        tag: reference.tag ?? '',
        digest: content.digest,
        labels: { ...content.config.labels },
      },
      config: structuredClone(content.config),
      platform: { ...content.platform },
      layers: content.layers.map((l) => ({ ...l })),
      layerDirs: content.layers.map((l) => l.dir),
      size: content.layers.reduce((n, l) => n + l.size, 0),
    }
  }
}

async function atomicWrite(tmpDir: string, path: string, data: string | Buffer): Promise<void> {
  const tmp = join(tmpDir, `${process.pid}-write-${randomBytes(6).toString('hex')}`)
  try {
    await writeFile(tmp, data)
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {})
    throw err
  }
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length)
  let next = 0
  let failed: unknown
  const worker = async () => {
    while (next < items.length && failed === undefined) {
      const i = next++
      try {
        results[i] = await fn(items[i]!, i)
      } catch (err) {
        failed ??= err
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  if (failed !== undefined) throw failed
  return results
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10
}

/** Every layer directory in a store (for tests and diagnostics). */
export function listStoredLayers(dataDir: string): string[] {
  const out: string[] = []
  for (const algorithm of ['sha256', 'sha512']) {
    try {
      for (const hex of readdirSync(join(dataDir, 'layers', algorithm))) out.push(`${algorithm}:${hex}`)
    } catch {
      // no such algorithm directory yet
    }
  }
  return out
}
