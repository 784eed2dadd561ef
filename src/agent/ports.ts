import type { ImageRef, LogLine, Machine } from '../core/index.js'
import type { ImageRuntimeConfig } from './store.js'

// What the agent needs from the image store (src/images) — kept as a port so the agent's logic
// is testable and the image store can change underneath.

export interface AgentImage {
  /** The reference as asked for. */
  ref: string
  /** The manifest digest: the agent re-resolves `repository@digest` after a restart. */
  digest: string
  imageRef: ImageRef
  config: ImageRuntimeConfig
}

export interface ImagePort {
  /** Resolves and fetches an image (cache first). Throws a typed error for bad or missing images. */
  pull(ref: string): Promise<AgentImage>
  /** Mounts the Machine's copy-on-write rootfs under `machineDir`; idempotent; returns its path. */
  prepareRootfs(image: AgentImage, machineDir: string): Promise<string>
  /** Unmounts and wipes the Machine's writable layer (a stop resets the rootfs, as on Fly). */
  resetRootfs(machineDir: string): Promise<void>
  /** Unmounts and removes everything under `machineDir` that the image store made. */
  releaseRootfs(machineDir: string): Promise<void>
}

/** What the agent tells the rest of the platform (NATS, the catalog, the proxy) as it happens. */
export interface AgentEvents {
  machineChanged?(machine: Machine, hostAddress: string): void
  machineRemoved?(machine: Machine): void
  log?(line: LogLine): void
}
