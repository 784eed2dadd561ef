// Builds OCI/Docker images from files on this machine (no Docker) and pushes them to a registry
// through the registry API: blob upload (POST then PUT ?digest=, dependency-facts §4:
// single-request POST uploads are not supported by distribution 2.8) and manifest PUT.
// Layers are deterministic (fixed mtimes, sorted as given), so the same spec gives the same digests.
import { createHash } from 'node:crypto'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { pack } from 'tar-stream'

/** Where images are pushed: a registry's base URL and host (the registry part of references),
 * with an Authorization for pushes when it wants one. `hangar up`'s local registry and the test
 * kit's both fit. */
export interface PushTarget {
  /** 'http://127.0.0.1:<port>' */
  url: string
  /** '127.0.0.1:<port>' */
  host: string
  pushAuthorization(repository: string): Promise<string | undefined>
}
type TestRegistry = PushTarget

export type LayerEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'whiteout' | 'opaque'

export interface LayerEntry {
  /** Path inside the image, e.g. 'usr/bin/busybox' (a leading '/' is dropped). For 'whiteout' the
   * path that is deleted ('data/gone.txt' becomes 'data/.wh.gone.txt'); for 'opaque' the directory. */
  path: string
  type?: LayerEntryType
  content?: string | Buffer
  /** Read the content from this file on the host. */
  sourceFile?: string
  mode?: number
  uid?: number
  gid?: number
  /** Symlink or hard link target. */
  target?: string
}

export interface ImageConfigSpec {
  Entrypoint?: string[]
  Cmd?: string[]
  Env?: string[]
  WorkingDir?: string
  User?: string
  Labels?: Record<string, string>
  ExposedPorts?: Record<string, object>
  StopSignal?: string
}

export type Compression = 'gzip' | 'zstd' | 'none'

export interface ImageSpec {
  /** Bottom layer first. */
  layers: LayerEntry[][]
  config?: ImageConfigSpec
  mediaTypes?: 'oci' | 'docker'
  compression?: Compression
  platform?: { os: string; architecture: string; variant?: string }
  /** Also wrap the image in a one-entry manifest list / OCI index, which then carries the tag. */
  index?: boolean
}

export interface BuiltLayer {
  blob: Buffer
  digest: string
  diffId: string
  size: number
  mediaType: string
}

export interface PushedImage {
  /** '127.0.0.1:5000/app:v1' */
  ref: string
  /** '127.0.0.1:5000/app@sha256:…' */
  pinnedRef: string
  repository: string
  tag: string
  /** The manifest's digest. */
  digest: string
  manifestBytes: Buffer
  manifestMediaType: string
  configDigest: string
  config: Record<string, unknown>
  layers: Array<Omit<BuiltLayer, 'blob'>>
  platform: { os: string; architecture: string; variant?: string }
  /** With `index: true`: the index the tag names (a pull resolves to this digest). */
  index?: { digest: string; mediaType: string; pinnedRef: string }
}

export interface PushedIndex {
  ref: string
  pinnedRef: string
  repository: string
  tag: string
  digest: string
  mediaType: string
  images: PushedImage[]
}

const MTIME = new Date('2024-01-01T00:00:00Z')

const MEDIA = {
  oci: {
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    index: 'application/vnd.oci.image.index.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    layer: { gzip: 'application/vnd.oci.image.layer.v1.tar+gzip', zstd: 'application/vnd.oci.image.layer.v1.tar+zstd', none: 'application/vnd.oci.image.layer.v1.tar' },
  },
  docker: {
    manifest: 'application/vnd.docker.distribution.manifest.v2+json',
    index: 'application/vnd.docker.distribution.manifest.list.v2+json',
    config: 'application/vnd.docker.container.image.v1+json',
    layer: { gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip', zstd: undefined, none: undefined },
  },
} as const

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/** A tar of the entries, in the given order. */
export async function buildTar(entries: LayerEntry[]): Promise<Buffer> {
  const archive = pack()
  const chunks: Buffer[] = []
  archive.on('data', (c: unknown) => { chunks.push(c as Buffer) })
  const done = new Promise<void>((resolve, reject) => { archive.on('end', resolve); archive.on('error', reject) })
  for (const entry of entries) {
    const path = entry.path.replace(/^\/+/, '')
    const base = { mtime: MTIME, uid: entry.uid ?? 0, gid: entry.gid ?? 0, uname: '', gname: '' }
    const type = entry.type ?? (entry.target !== undefined ? 'symlink' : 'file')
    const add = (header: Parameters<typeof archive.entry>[0], body?: Buffer) =>
      new Promise<void>((resolve, reject) => { archive.entry(header, body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve())) })
    switch (type) {
      case 'dir':
        await add({ ...base, name: path.endsWith('/') ? path : `${path}/`, type: 'directory', mode: entry.mode ?? 0o755 })
        break
      case 'symlink':
        await add({ ...base, name: path, type: 'symlink', linkname: entry.target ?? '', mode: entry.mode ?? 0o777 })
        break
      case 'hardlink':
        await add({ ...base, name: path, type: 'link', linkname: (entry.target ?? '').replace(/^\/+/, ''), mode: entry.mode ?? 0o644 })
        break
      case 'whiteout': {
        const slash = path.lastIndexOf('/')
        const name = slash >= 0 ? `${path.slice(0, slash + 1)}.wh.${path.slice(slash + 1)}` : `.wh.${path}`
        await add({ ...base, name, type: 'file', mode: 0o644 })
        break
      }
      case 'opaque':
        await add({ ...base, name: `${path.replace(/\/+$/, '')}/.wh..wh..opq`, type: 'file', mode: 0o644 })
        break
      case 'file': {
        const body = entry.sourceFile !== undefined ? readFileSync(entry.sourceFile) : Buffer.from(entry.content ?? '')
        await add({ ...base, name: path, type: 'file', mode: entry.mode ?? 0o644, size: body.length }, body)
        break
      }
    }
  }
  archive.finalize()
  await done
  return Buffer.concat(chunks)
}

async function compress(tar: Buffer, compression: Compression): Promise<Buffer> {
  if (compression === 'none') return tar
  if (compression === 'gzip') return gzipSync(tar, { level: 1 })
  return new Promise((resolve, reject) => {
    const child = spawn('zstd', ['-q', '-c', '-1'], { stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.on('error', reject)
    child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`zstd exited ${code}`))))
    child.stdin.end(tar)
  })
}

const layerCache = new Map<string, Promise<BuiltLayer>>()

/** Builds one layer; `cacheKey` memoises it for the process (the busybox layer is 2 MB). */
export function buildLayer(entries: LayerEntry[], options: { compression?: Compression; mediaTypes?: 'oci' | 'docker'; cacheKey?: string } = {}): Promise<BuiltLayer> {
  const compression = options.compression ?? 'gzip'
  const mediaTypes = options.mediaTypes ?? 'oci'
  const mediaType = MEDIA[mediaTypes].layer[compression]
  if (!mediaType) throw new Error(`Docker media types have no ${compression} layer type; use mediaTypes: 'oci'`)
  const build = async (): Promise<BuiltLayer> => {
    const tar = await buildTar(entries)
    const blob = await compress(tar, compression)
    return { blob, digest: sha256(blob), diffId: sha256(tar), size: blob.length, mediaType }
  }
  if (!options.cacheKey) return build()
  const key = `${options.cacheKey}|${compression}|${mediaTypes}`
  let cached = layerCache.get(key)
  if (!cached) {
    cached = build()
    layerCache.set(key, cached)
    cached.catch(() => layerCache.delete(key))
  }
  return cached
}

/** Splits 'app:v1' / 'org/app' into repository and tag (default 'latest'). */
function splitName(name: string): { repository: string; tag: string } {
  const colon = name.lastIndexOf(':')
  if (colon > name.lastIndexOf('/')) return { repository: name.slice(0, colon), tag: name.slice(colon + 1) }
  return { repository: name, tag: 'latest' }
}

async function authHeaders(registry: TestRegistry, repository: string): Promise<Record<string, string>> {
  const authorization = await registry.pushAuthorization(repository)
  return authorization ? { authorization } : {}
}

/** Uploads a blob unless the registry has it: POST /blobs/uploads/, then PUT <Location>&digest=. */
export async function pushBlob(registry: TestRegistry, repository: string, blob: Buffer, digest = sha256(blob)): Promise<string> {
  const headers = await authHeaders(registry, repository)
  const head = await fetch(`${registry.url}/v2/${repository}/blobs/${digest}`, { method: 'HEAD', headers })
  if (head.status === 200) return digest
  const start = await fetch(`${registry.url}/v2/${repository}/blobs/uploads/`, { method: 'POST', headers })
  await start.arrayBuffer()
  const location = start.headers.get('location')
  if (start.status !== 202 || !location) throw new Error(`blob upload to ${repository} not accepted: HTTP ${start.status}`)
  const uploadUrl = new URL(location, registry.url)
  uploadUrl.searchParams.set('digest', digest)
  const put = await fetch(uploadUrl, { method: 'PUT', headers: { ...headers, 'content-type': 'application/octet-stream' }, body: blob })
  const text = await put.text()
  if (put.status !== 201) throw new Error(`blob PUT to ${repository} failed: HTTP ${put.status} ${text}`)
  return digest
}

/** PUT /v2/<repository>/manifests/<reference>; returns the digest the registry reports. */
export async function pushManifest(registry: TestRegistry, repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<string> {
  const res = await fetch(`${registry.url}/v2/${repository}/manifests/${reference}`, {
    method: 'PUT',
    headers: { ...(await authHeaders(registry, repository)), 'content-type': mediaType },
    body: bytes,
  })
  const text = await res.text()
  if (res.status !== 201) throw new Error(`manifest PUT ${repository}:${reference} failed: HTTP ${res.status} ${text}`)
  return res.headers.get('docker-content-digest') ?? sha256(bytes)
}

/** Builds the image described by `spec` and pushes it as `name` ('app:v1'). */
export async function pushImage(registry: TestRegistry, name: string, spec: ImageSpec, options: { tag?: boolean; layerCacheKeys?: Array<string | undefined> } = {}): Promise<PushedImage> {
  const { repository, tag } = splitName(name)
  const mediaTypes = spec.mediaTypes ?? 'oci'
  const platform = spec.platform ?? { os: 'linux', architecture: 'amd64' }
  const layers = await Promise.all(spec.layers.map((entries, i) => {
    const cacheKey = options.layerCacheKeys?.[i]
    return buildLayer(entries, { compression: spec.compression ?? 'gzip', mediaTypes, ...(cacheKey ? { cacheKey } : {}) })
  }))
  for (const layer of layers) await pushBlob(registry, repository, layer.blob, layer.digest)

  const config: Record<string, unknown> = {
    created: MTIME.toISOString(),
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: spec.config ?? {},
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map(() => ({ created: MTIME.toISOString(), created_by: 'hangar test kit' })),
  }
  const configBytes = Buffer.from(JSON.stringify(config))
  const configDigest = await pushBlob(registry, repository, configBytes)

  const manifestMediaType = MEDIA[mediaTypes].manifest
  const manifest = {
    schemaVersion: 2,
    mediaType: manifestMediaType,
    config: { mediaType: MEDIA[mediaTypes].config, digest: configDigest, size: configBytes.length },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  }
  const manifestBytes = Buffer.from(JSON.stringify(manifest))
  const digest = sha256(manifestBytes)
  const tagManifest = options.tag !== false && !spec.index
  const reported = await pushManifest(registry, repository, tagManifest ? tag : digest, manifestBytes, manifestMediaType)
  if (reported !== digest) throw new Error(`registry reported manifest digest ${reported}, expected ${digest}`)
  let index: PushedImage['index']
  if (spec.index) {
    const mediaType = MEDIA[mediaTypes].index
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, manifests: [{ mediaType: manifestMediaType, digest, size: manifestBytes.length, platform }] }))
    const indexDigest = await pushManifest(registry, repository, options.tag === false ? sha256(bytes) : tag, bytes, mediaType)
    index = { digest: indexDigest, mediaType, pinnedRef: `${registry.host}/${repository}@${indexDigest}` }
  }
  return {
    ...(index ? { index } : {}),
    ref: `${registry.host}/${repository}:${tag}`,
    pinnedRef: `${registry.host}/${repository}@${digest}`,
    repository,
    tag,
    digest,
    manifestBytes,
    manifestMediaType,
    configDigest,
    config,
    layers: layers.map(({ blob: _blob, ...rest }) => rest),
    platform,
  }
}

/** Pushes one image per platform (untagged) and a manifest list / OCI index over them as `name`. */
export async function pushIndex(registry: TestRegistry, name: string, images: ImageSpec[], options: { mediaTypes?: 'oci' | 'docker'; layerCacheKeys?: Array<Array<string | undefined>> } = {}): Promise<PushedIndex> {
  const { repository, tag } = splitName(name)
  const mediaTypes = options.mediaTypes ?? 'oci'
  const pushed: PushedImage[] = []
  for (const [i, spec] of images.entries()) {
    const keys = options.layerCacheKeys?.[i]
    pushed.push(await pushImage(registry, `${repository}:${tag}`, { ...spec, mediaTypes }, { tag: false, ...(keys ? { layerCacheKeys: keys } : {}) }))
  }
  const mediaType = MEDIA[mediaTypes].index
  const index = {
    schemaVersion: 2,
    mediaType,
    manifests: pushed.map((p) => ({ mediaType: p.manifestMediaType, digest: p.digest, size: p.manifestBytes.length, platform: p.platform })),
  }
  const bytes = Buffer.from(JSON.stringify(index))
  const digest = await pushManifest(registry, repository, tag, bytes, mediaType)
  return { ref: `${registry.host}/${repository}:${tag}`, pinnedRef: `${registry.host}/${repository}@${digest}`, repository, tag, digest, mediaType, images: pushed }
}

// ---- ready-made images ----

/** The busybox applets the images link (each /bin/<applet> → /usr/bin/busybox). */
export const BUSYBOX_APPLETS = ['sh', 'sleep', 'echo', 'cat', 'ls', 'env', 'hostname', 'httpd', 'wget', 'kill', 'ps', 'id', 'dd', 'head', 'yes', 'true', 'false', 'mkdir', 'rm', 'touch', 'sync'] as const

const BUSYBOX_SOURCE = '/bin/busybox' // Debian busybox-static

/** A minimal Linux userland: busybox-static at /usr/bin/busybox, applet links in /bin, /etc/passwd. */
export function busyboxLayerEntries(): LayerEntry[] {
  return [
    ...['bin', 'dev', 'etc', 'home', 'proc', 'root', 'sys', 'usr', 'usr/bin', 'var'].map((path): LayerEntry => ({ path, type: 'dir', mode: path === 'root' ? 0o700 : 0o755 })),
    { path: 'tmp', type: 'dir', mode: 0o1777 },
    { path: 'usr/bin/busybox', type: 'file', sourceFile: BUSYBOX_SOURCE, mode: 0o755 },
    ...BUSYBOX_APPLETS.map((applet): LayerEntry => ({ path: `bin/${applet}`, type: 'symlink', target: '/usr/bin/busybox' })),
    { path: 'usr/bin/env', type: 'symlink', target: '/usr/bin/busybox' },
    { path: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    { path: 'etc/group', content: 'root:x:0:\nnogroup:x:65534:\n' },
  ]
}

export const BUSYBOX_ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']

export interface ReadyImageOptions {
  mediaTypes?: 'oci' | 'docker'
  config?: ImageConfigSpec
  /** Extra layers on top of the ready-made ones. */
  extraLayers?: LayerEntry[][]
}

/** 'busybox:v1' by default: one layer, `Cmd ["sh"]`. */
export function pushBusyboxImage(registry: TestRegistry, name = 'busybox:v1', options: ReadyImageOptions = {}): Promise<PushedImage> {
  return pushImage(registry, name, {
    layers: [busyboxLayerEntries(), ...(options.extraLayers ?? [])],
    config: { Env: BUSYBOX_ENV, Cmd: ['sh'], ...options.config },
    mediaTypes: options.mediaTypes ?? 'oci',
  }, { layerCacheKeys: ['busybox'] })
}

/** What the http-server image serves at '/' (and '/index.html'). */
export const HTTP_SERVER_BODY = 'hello from hangar\n'
export const HTTP_SERVER_PORT = 8080

/** busybox `httpd -f -p 8080 -h /www` serving HTTP_SERVER_BODY: the small static HTTP server of tests. */
export function pushHttpServerImage(registry: TestRegistry, name = 'http-server:v1', options: ReadyImageOptions & { body?: string } = {}): Promise<PushedImage> {
  return pushImage(registry, name, {
    layers: [busyboxLayerEntries(), [{ path: 'www', type: 'dir' }, { path: 'www/index.html', content: options.body ?? HTTP_SERVER_BODY }], ...(options.extraLayers ?? [])],
    config: {
      Env: BUSYBOX_ENV,
      Cmd: ['httpd', '-f', '-p', String(HTTP_SERVER_PORT), '-h', '/www'],
      ExposedPorts: { [`${HTTP_SERVER_PORT}/tcp`]: {} },
      Labels: { 'org.opencontainers.image.title': 'hangar http-server' },
      ...options.config,
    },
    mediaTypes: options.mediaTypes ?? 'oci',
  }, { layerCacheKeys: ['busybox'] })
}

/** What a rootfs of the whiteout image must show. */
export const WHITEOUT_IMAGE_EXPECT = {
  /** Files with their content. */
  present: {
    'data/keep.txt': 'keep\n',
    'data/readded.txt': 'second life\n',
    'opaque/new.txt': 'new\n',
    'data/nested/inner.txt': 'inner\n',
  } as Record<string, string>,
  /** Paths that must not exist. */
  absent: ['data/gone.txt', 'data/dir-gone', 'opaque/old.txt', 'opaque/sub', 'data/nested/gone.txt'],
}

/** Three layers exercising whiteouts: a deleted file, a deleted directory, an opaque directory, a
 * file deleted and added again, and a deletion inside a directory the same layer also lists. */
export function pushWhiteoutImage(registry: TestRegistry, name = 'whiteouts:v1', options: ReadyImageOptions = {}): Promise<PushedImage> {
  return pushImage(registry, name, {
    layers: [
      busyboxLayerEntries(),
      [
        { path: 'data', type: 'dir' },
        { path: 'data/keep.txt', content: 'keep\n' },
        { path: 'data/gone.txt', content: 'gone\n' },
        { path: 'data/readded.txt', content: 'first life\n' },
        { path: 'data/dir-gone', type: 'dir' },
        { path: 'data/dir-gone/x.txt', content: 'x\n' },
        { path: 'data/nested', type: 'dir' },
        { path: 'data/nested/gone.txt', content: 'nested gone\n' },
        { path: 'data/nested/inner.txt', content: 'inner\n' },
        { path: 'opaque', type: 'dir' },
        { path: 'opaque/old.txt', content: 'old\n' },
        { path: 'opaque/sub', type: 'dir' },
        { path: 'opaque/sub/deep.txt', content: 'deep\n' },
      ],
      [
        { path: 'data', type: 'dir' },
        { path: 'data/gone.txt', type: 'whiteout' },
        { path: 'data/dir-gone', type: 'whiteout' },
        { path: 'data/readded.txt', type: 'whiteout' },
        { path: 'data/nested', type: 'dir' },
        { path: 'data/nested/gone.txt', type: 'whiteout' },
        { path: 'opaque', type: 'dir' },
        { path: 'opaque', type: 'opaque' },
        { path: 'opaque/new.txt', content: 'new\n' },
      ],
      [
        { path: 'data/readded.txt', content: 'second life\n' },
      ],
      ...(options.extraLayers ?? []),
    ],
    config: { Env: BUSYBOX_ENV, Cmd: ['sh'], ...options.config },
    mediaTypes: options.mediaTypes ?? 'oci',
  }, { layerCacheKeys: ['busybox'] })
}

/** A manifest list / OCI index with linux/amd64 (busybox, /etc/arch = "amd64") and linux/arm64/v8
 * (/etc/arch = "arm64" only; not runnable here, it just must not be chosen). */
export function pushMultiArchImage(registry: TestRegistry, name = 'multiarch:v1', options: { mediaTypes?: 'oci' | 'docker' } = {}): Promise<PushedIndex> {
  return pushIndex(registry, name, [
    { layers: [[{ path: 'etc', type: 'dir' }, { path: 'etc/arch', content: 'arm64\n' }]], config: { Cmd: ['sh'] }, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    { layers: [busyboxLayerEntries(), [{ path: 'etc/arch', content: 'amd64\n' }]], config: { Env: BUSYBOX_ENV, Cmd: ['sh'] }, platform: { os: 'linux', architecture: 'amd64' } },
  ], { mediaTypes: options.mediaTypes ?? 'oci', layerCacheKeys: [[], ['busybox']] })
}
