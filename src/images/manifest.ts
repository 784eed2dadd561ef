import { ImagePullError } from './errors.js'
import { parseDigest } from './digest.js'

// Manifests, indexes and image configs, parsed and checked as plain data (no I/O here).
// Media types: OCI image-spec media-types.md and Docker's "Image Manifest V2, Schema 2".
// Docker schema 1 (signed JSON, no config blob) is refused: registries stopped serving it.

export const MediaTypes = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
} as const

/** What we send as `Accept` on manifest requests. dependency-facts §4: distribution 2.8 answers
 * 404 for an OCI manifest unless the Accept header names the OCI type. */
export const MANIFEST_ACCEPT = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ')

/** OCI image-spec manifest.md recommends registries accept manifests up to 4 MiB; we read no more. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024

export interface Platform {
  os: string
  architecture: string
  variant?: string
}

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  platform?: Platform
  annotations?: Record<string, string>
  urls?: string[]
}

export interface ImageIndex {
  kind: 'index'
  mediaType: string
  manifests: Descriptor[]
}

export interface ImageManifest {
  kind: 'manifest'
  mediaType: string
  config: Descriptor
  layers: Descriptor[]
}

export type ParsedManifest = ImageIndex | ImageManifest

/** The parts of an image config a Machine runs with (OCI image-spec config.md `config`), with
 * absent fields normalised to empty values. */
export interface ImageRuntimeConfig {
  env: string[]
  entrypoint: string[]
  cmd: string[]
  workingDir: string
  user: string
  labels: Record<string, string>
  /** e.g. ['8080/tcp'] */
  exposedPorts: string[]
  stopSignal?: string
}

export interface ParsedImageConfig {
  os?: string
  architecture?: string
  variant?: string
  diffIds: string[]
  runtime: ImageRuntimeConfig
}

export type LayerCompression = 'gzip' | 'zstd' | 'none'

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function parseJson(bytes: Uint8Array, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(bytes).toString('utf8'))
  } catch (err) {
    throw new ImagePullError('invalid_image', `${what} is not valid JSON: ${(err as Error).message}`)
  }
  if (!isObject(value)) throw new ImagePullError('invalid_image', `${what} is not a JSON object`)
  return value
}

function parseDescriptor(value: unknown, what: string): Descriptor {
  if (!isObject(value)) throw new ImagePullError('invalid_image', `${what} is not a descriptor object`)
  const { mediaType, digest, size } = value
  if (typeof mediaType !== 'string' || mediaType === '') throw new ImagePullError('invalid_image', `${what} has no mediaType`)
  if (typeof digest !== 'string') throw new ImagePullError('invalid_image', `${what} has no digest`)
  parseDigest(digest, `${what} digest`)
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new ImagePullError('invalid_image', `${what} has an invalid size`)
  const descriptor: Descriptor = { mediaType, digest, size }
  if (isObject(value.platform)) {
    const p = value.platform
    if (typeof p.os === 'string' && typeof p.architecture === 'string') {
      descriptor.platform = { os: p.os, architecture: p.architecture }
      if (typeof p.variant === 'string' && p.variant !== '') descriptor.platform.variant = p.variant
    }
  }
  if (isObject(value.annotations)) descriptor.annotations = stringRecord(value.annotations)
  if (Array.isArray(value.urls)) descriptor.urls = value.urls.filter((u): u is string => typeof u === 'string')
  return descriptor
}

function stringRecord(value: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v
  return out
}

/** Picks the media type: the body's own `mediaType` field, else the response Content-Type, else
 * the shape (OCI allows the field to be absent). */
export function parseManifest(bytes: Uint8Array, contentType: string | undefined, what: string): ParsedManifest {
  const json = parseJson(bytes, what)
  const declared = typeof json.mediaType === 'string' ? json.mediaType : undefined
  const header = contentType?.split(';')[0]?.trim()
  let mediaType = declared ?? header ?? ''
  if (mediaType === '' || mediaType === 'application/json' || mediaType === 'application/octet-stream') {
    mediaType = Array.isArray(json.manifests) ? MediaTypes.ociIndex : MediaTypes.ociManifest
  }
  if (json.schemaVersion === 1 || mediaType === MediaTypes.dockerSchema1Signed || mediaType === MediaTypes.dockerSchema1) {
    throw new ImagePullError('unsupported', `${what} is a Docker schema 1 manifest, which is not supported (push the image again with a current Docker or buildah)`)
  }
  if (json.schemaVersion !== 2) throw new ImagePullError('invalid_image', `${what} has schemaVersion ${JSON.stringify(json.schemaVersion)}, expected 2`)

  if (mediaType === MediaTypes.ociIndex || mediaType === MediaTypes.dockerManifestList) {
    if (!Array.isArray(json.manifests)) throw new ImagePullError('invalid_image', `${what} is an index without a manifests array`)
    return { kind: 'index', mediaType, manifests: json.manifests.map((m, i) => parseDescriptor(m, `${what} manifests[${i}]`)) }
  }
  if (mediaType === MediaTypes.ociManifest || mediaType === MediaTypes.dockerManifest) {
    const config = parseDescriptor(json.config, `${what} config`)
    if (!Array.isArray(json.layers)) throw new ImagePullError('invalid_image', `${what} has no layers array`)
    const layers = json.layers.map((l, i) => parseDescriptor(l, `${what} layers[${i}]`))
    return { kind: 'manifest', mediaType, config, layers }
  }
  throw new ImagePullError('unsupported', `${what} has media type ${JSON.stringify(mediaType)}, which is not an image manifest or index Hangar supports`)
}

/** How a layer is compressed, from its media type. The blob's magic bytes are checked again when it
 * is unpacked (some registries label uncompressed layers as gzip). */
export function layerCompression(descriptor: Descriptor, what: string): LayerCompression {
  const type = descriptor.mediaType.replace('.nondistributable', '')
  switch (type) {
    case MediaTypes.dockerLayerGzip:
    case MediaTypes.ociLayerGzip:
      return 'gzip'
    case MediaTypes.ociLayerZstd:
      return 'zstd'
    case MediaTypes.ociLayer:
      return 'none'
    case MediaTypes.dockerForeignLayerGzip:
      throw new ImagePullError('unsupported', `${what} is a foreign (Windows) layer, which Linux hosts cannot run`)
    default:
      throw new ImagePullError('unsupported', `${what} has media type ${JSON.stringify(descriptor.mediaType)}, which is not a layer type Hangar supports`)
  }
}

/** Architecture names as OCI spells them (Go's GOARCH) for Node's `process.arch`. */
export function hostPlatform(arch: string = process.arch): Platform {
  const architecture = ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' } as Record<string, string>)[arch] ?? arch
  return { os: 'linux', architecture }
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`
}

/** Chooses the index entry for `wanted` (OCI image-index.md: the first match wins). A variant is
 * only compared when `wanted` names one. Attestation entries (`unknown/unknown`) never match. */
export function selectPlatformManifest(index: ImageIndex, wanted: Platform): Descriptor | undefined {
  const candidates = index.manifests.filter((m) =>
    m.platform !== undefined &&
    m.platform.os === wanted.os &&
    m.platform.architecture === wanted.architecture &&
    (wanted.variant === undefined || m.platform.variant === undefined || m.platform.variant === wanted.variant) &&
    (m.mediaType === MediaTypes.ociManifest || m.mediaType === MediaTypes.dockerManifest || m.mediaType === MediaTypes.ociIndex || m.mediaType === MediaTypes.dockerManifestList))
  // An exact variant match beats an entry that does not name one.
  return candidates.find((m) => m.platform?.variant === wanted.variant) ?? candidates[0]
}

function stringArray(value: unknown, what: string): string[] {
  if (value === undefined || value === null) return []
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw new ImagePullError('invalid_image', `${what} is not an array of strings`)
  return value
}

/** Parses an image config (OCI image-spec config.md; Docker's is the same shape). */
export function parseImageConfig(bytes: Uint8Array, what: string): ParsedImageConfig {
  const json = parseJson(bytes, what)
  const rootfs = json.rootfs
  if (!isObject(rootfs) || rootfs.type !== 'layers') throw new ImagePullError('invalid_image', `${what} has no rootfs of type "layers"`)
  const diffIds = stringArray(rootfs.diff_ids, `${what} rootfs.diff_ids`)
  diffIds.forEach((d, i) => parseDigest(d, `${what} rootfs.diff_ids[${i}]`))
  const c = isObject(json.config) ? json.config : {}
  const runtime: ImageRuntimeConfig = {
    env: stringArray(c.Env, `${what} config.Env`),
    entrypoint: stringArray(c.Entrypoint, `${what} config.Entrypoint`),
    cmd: stringArray(c.Cmd, `${what} config.Cmd`),
    workingDir: typeof c.WorkingDir === 'string' ? c.WorkingDir : '',
    user: typeof c.User === 'string' ? c.User : '',
    labels: isObject(c.Labels) ? stringRecord(c.Labels) : {},
    exposedPorts: isObject(c.ExposedPorts) ? Object.keys(c.ExposedPorts) : [],
  }
  if (typeof c.StopSignal === 'string' && c.StopSignal !== '') runtime.stopSignal = c.StopSignal
  const parsed: ParsedImageConfig = { diffIds, runtime }
  if (typeof json.os === 'string') parsed.os = json.os
  if (typeof json.architecture === 'string') parsed.architecture = json.architecture
  if (typeof json.variant === 'string' && json.variant !== '') parsed.variant = json.variant
  return parsed
}
