// Front door of src/images (Fly's containerd + LVM): pull OCI/Docker images into a shared,
// content-addressed, digest-verified cache, and give each Machine a copy-on-write rootfs.
//
//   const store = new ImageStore({ dataDir, logger, insecureRegistries, credentials })
//   const image = await store.pull('127.0.0.1:5000/app:v1')      // PulledImage
//   store.get('127.0.0.1:5000/app@sha256:…')                       // cached only, no network
//   const rootfs = await prepareRootfs(image, machineDir)          // '<machineDir>/rootfs'
//   await resetRootfs(machineDir)    // on stop: unmount, drop the Machine's writes
//   await releaseRootfs(machineDir)  // on destroy: unmount, delete rootfs + overlay dirs
//   await listRootfsMounts(machinesRoot)  // crash recovery: every Hangar rootfs mounted there
//   await sweepRootfsMounts(machinesRoot, (dir) => known.has(dir))  // release the leaked ones
//   await store.close()
//
// Errors: bad references throw InvalidArgumentError; unusable images throw ImagePullError
// (code 'unprocessable', with a `reason`); unreachable registries or 5xx throw UnavailableError.
export { ImageStore, listStoredLayers } from './image-store.js'
export type { ImageStoreOptions, PulledImage, PulledLayer, PullOptions } from './image-store.js'
export { ImagePullError, isImagePullError } from './errors.js'
export type { ImagePullFailure } from './errors.js'
export { parseImageReference, formatImageReference, isLoopbackRegistry } from './reference.js'
export type { ImageReference } from './reference.js'
export { MediaTypes, hostPlatform, formatPlatform } from './manifest.js'
export type { ImageRuntimeConfig, Platform } from './manifest.js'
export type { CredentialsProvider, RegistryCredentials } from './registry-client.js'
export { digestOf, parseDigest } from './digest.js'
export {
  prepareRootfs, resetRootfs, unmountRootfs, releaseRootfs, isRootfsMounted, listRootfsMounts, sweepRootfsMounts, rootfsPaths, ROOTFS_MOUNT_SOURCE,
} from './rootfs.js'
export type { RootfsImage, RootfsMount, RootfsPaths } from './rootfs.js'
export * from './image-builder.js'
export { mountMachinesPool, unmountMachinesPool, type MachinesPoolOptions } from './machines-pool.js'
