import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isImagePullError } from './errors.js'
import { MediaTypes, hostPlatform, layerCompression, parseImageConfig, parseManifest, selectPlatformManifest, type ImageIndex } from './manifest.js'

const D = (c: string) => 'sha256:' + c.repeat(64)
const json = (v: unknown) => Buffer.from(JSON.stringify(v))

const dockerManifest = {
  schemaVersion: 2,
  mediaType: MediaTypes.dockerManifest,
  config: { mediaType: MediaTypes.dockerConfig, digest: D('c'), size: 100 },
  layers: [{ mediaType: MediaTypes.dockerLayerGzip, digest: D('1'), size: 10 }],
}

test('Docker schema2 and OCI manifests parse, with the media type from the body, the header or the shape', () => {
  const docker = parseManifest(json(dockerManifest), undefined, 'm')
  assert.equal(docker.kind, 'manifest')
  assert.equal(docker.mediaType, MediaTypes.dockerManifest)
  const { mediaType: _drop, ...noType } = dockerManifest
  assert.equal(parseManifest(json(noType), MediaTypes.ociManifest, 'm').mediaType, MediaTypes.ociManifest)
  assert.equal(parseManifest(json(noType), undefined, 'm').mediaType, MediaTypes.ociManifest)
  const index = parseManifest(json({ schemaVersion: 2, manifests: [{ mediaType: MediaTypes.ociManifest, digest: D('a'), size: 5, platform: { os: 'linux', architecture: 'amd64' } }] }), 'application/json', 'i')
  assert.equal(index.kind, 'index')
  assert.equal(index.mediaType, MediaTypes.ociIndex)
})

test('schema 1, unknown types and malformed documents are refused with precise reasons', () => {
  assert.throws(() => parseManifest(json({ schemaVersion: 1, name: 'x' }), MediaTypes.dockerSchema1Signed, 'm'), (e) => isImagePullError(e, 'unsupported') && /schema 1/.test(e.message))
  assert.throws(() => parseManifest(json({ ...dockerManifest, mediaType: 'application/x-other' }), undefined, 'm'), (e) => isImagePullError(e, 'unsupported'))
  assert.throws(() => parseManifest(Buffer.from('{not json'), undefined, 'manifest X'), (e) => isImagePullError(e, 'invalid_image') && e.message.startsWith('manifest X is not valid JSON'))
  assert.throws(() => parseManifest(json({ ...dockerManifest, layers: [{ mediaType: 'x', digest: 'sha256:zz', size: 1 }] }), undefined, 'm'), (e) => isImagePullError(e, 'invalid_image'))
  assert.throws(() => parseManifest(json({ ...dockerManifest, config: { ...dockerManifest.config, size: -1 } }), undefined, 'm'), (e) => isImagePullError(e, 'invalid_image') && /size/.test(e.message))
  assert.throws(() => parseManifest(json([1, 2]), undefined, 'm'), (e) => isImagePullError(e, 'invalid_image'))
})

test('the host platform is picked from an index; attestations and other architectures are not', () => {
  const index: ImageIndex = {
    kind: 'index',
    mediaType: MediaTypes.ociIndex,
    manifests: [
      { mediaType: MediaTypes.ociManifest, digest: D('1'), size: 1, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { mediaType: MediaTypes.ociManifest, digest: D('9'), size: 1, platform: { os: 'unknown', architecture: 'unknown' } },
      { mediaType: MediaTypes.ociManifest, digest: D('2'), size: 1, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: MediaTypes.ociManifest, digest: D('3'), size: 1, platform: { os: 'windows', architecture: 'amd64' } },
      { mediaType: MediaTypes.ociManifest, digest: D('4'), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
      { mediaType: MediaTypes.ociManifest, digest: D('5'), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    ],
  }
  assert.equal(selectPlatformManifest(index, { os: 'linux', architecture: 'amd64' })?.digest, D('2'))
  assert.equal(selectPlatformManifest(index, { os: 'linux', architecture: 'arm64' })?.digest, D('1'))
  assert.equal(selectPlatformManifest(index, { os: 'linux', architecture: 'arm', variant: 'v7' })?.digest, D('5'))
  assert.equal(selectPlatformManifest(index, { os: 'linux', architecture: 's390x' }), undefined)
  assert.deepEqual(hostPlatform('x64'), { os: 'linux', architecture: 'amd64' })
  assert.deepEqual(hostPlatform('arm64'), { os: 'linux', architecture: 'arm64' })
})

test('image config: runtime fields normalised, diff_ids checked', () => {
  const config = parseImageConfig(json({
    architecture: 'amd64', os: 'linux',
    config: { Env: ['A=1'], Entrypoint: ['/bin/tini'], Cmd: null, WorkingDir: '/app', User: '1000:1000', Labels: { a: 'b', n: 1 }, ExposedPorts: { '8080/tcp': {} }, StopSignal: 'SIGINT' },
    rootfs: { type: 'layers', diff_ids: [D('d')] },
  }), 'config')
  assert.deepEqual(config, {
    architecture: 'amd64', os: 'linux', diffIds: [D('d')],
    runtime: { env: ['A=1'], entrypoint: ['/bin/tini'], cmd: [], workingDir: '/app', user: '1000:1000', labels: { a: 'b' }, exposedPorts: ['8080/tcp'], stopSignal: 'SIGINT' },
  })
  const bare = parseImageConfig(json({ rootfs: { type: 'layers', diff_ids: [] } }), 'config')
  assert.deepEqual(bare.runtime, { env: [], entrypoint: [], cmd: [], workingDir: '', user: '', labels: {}, exposedPorts: [] })
  assert.throws(() => parseImageConfig(json({ rootfs: { type: 'layers', diff_ids: ['nope'] } }), 'config'), (e) => isImagePullError(e, 'invalid_image'))
  assert.throws(() => parseImageConfig(json({ config: { Env: 'A=1' }, rootfs: { type: 'layers', diff_ids: [] } }), 'config'), (e) => isImagePullError(e, 'invalid_image') && /Env/.test(e.message))
  assert.throws(() => parseImageConfig(json({}), 'config'), (e) => isImagePullError(e, 'invalid_image'))
})

test('layer compression comes from the media type; foreign layers are refused', () => {
  const layer = (mediaType: string) => ({ mediaType, digest: D('1'), size: 1 })
  assert.equal(layerCompression(layer(MediaTypes.dockerLayerGzip), 'l'), 'gzip')
  assert.equal(layerCompression(layer(MediaTypes.ociLayerGzip), 'l'), 'gzip')
  assert.equal(layerCompression(layer('application/vnd.oci.image.layer.nondistributable.v1.tar+gzip'), 'l'), 'gzip')
  assert.equal(layerCompression(layer(MediaTypes.ociLayerZstd), 'l'), 'zstd')
  assert.equal(layerCompression(layer(MediaTypes.ociLayer), 'l'), 'none')
  assert.throws(() => layerCompression(layer(MediaTypes.dockerForeignLayerGzip), 'l'), (e) => isImagePullError(e, 'unsupported') && /Windows/.test(e.message))
  assert.throws(() => layerCompression(layer('application/vnd.cncf.helm.chart.content.v1.tar+gzip'), 'l'), (e) => isImagePullError(e, 'unsupported'))
})
