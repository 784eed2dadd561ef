import type { CheckStatus, MachineService, MachineState, StopConfig } from './wire.js'

// What the proxy needs to know about Machines, and the two ports it talks through (DESIGN
// "Proxy"). On one host the agent feeds the RouteSource; in a cluster the catalog's subscription
// does (DESIGN "Catalog"). The MachineController is how autostart/autostop reach the Machine's
// agent (over NATS in production; a direct call in unit tests).

export interface MachineRoute {
  machineId: string
  app: string
  org: string
  region: string
  /** The host that runs the Machine; the edge proxy sends traffic there over the backhaul. */
  hostId: string
  state: MachineState
  instanceId: string
  /** Where the worker proxy on `hostId` connects to reach the Machine (its private IPv4, or 6PN). */
  address: string
  services: MachineService[]
  /** Service check statuses; a Machine gets traffic only when all of them pass (reference §2). */
  checks: CheckStatus[]
  cordoned: boolean
  processGroup: string
  /** Stop signal and timeout from the Machine config, used by autostop (reference §4.2). */
  stopConfig: StopConfig
  /** The app's primary region: min_machines_running counts only there (reference §4.2). */
  primaryRegion: string
  updatedAt: number
}

export interface AppRoute {
  app: string
  org: string
  /** Custom hostnames besides `<app>.<domain>`. */
  hostnames: string[]
}

export type RouteChange =
  | { kind: 'snapshot'; machines: MachineRoute[]; apps: AppRoute[] }
  | { kind: 'upsert'; machine: MachineRoute }
  | { kind: 'remove'; machineId: string }
  | { kind: 'app'; app: AppRoute }

export interface RouteSource {
  /** Calls `apply` with a full snapshot first, then with every change. Returns an unsubscribe. */
  subscribe(apply: (change: RouteChange) => void): () => void
}

export interface MachineController {
  start(app: string, machineId: string): Promise<void>
  stop(app: string, machineId: string, options: { signal?: string; timeoutMs?: number }): Promise<void>
  suspend(app: string, machineId: string): Promise<void>
}
