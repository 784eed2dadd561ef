import type { App, CreateMachineRequest, Machine, MachineEvent, UpdateMachineRequest } from '../core/index.js'

// What the deployer needs from the Machines API (flyctl's flapsutil.FlapsClient, cut to the calls
// a deploy makes). The CLI's ApiClient satisfies it over HTTP; unit tests use an in-memory fake.
// Deploys run on the client, as flyctl's do: the API only stores the release records.

export type ReleaseStatus = 'pending' | 'running' | 'complete' | 'failed' | 'rolled_back'

export interface ReleaseRecord {
  id: string
  version: number
  image: string
  status: ReleaseStatus
  strategy: string
  description?: string
  error?: string
  created_at: string
}

export interface DeployApi {
  getApp(name: string): Promise<App>
  createApp(name: string, org?: string): Promise<App>
  listMachines(app: string, query?: string): Promise<Machine[]>
  getMachine(app: string, id: string): Promise<Machine>
  createMachine(app: string, request: CreateMachineRequest): Promise<Machine>
  updateMachine(app: string, id: string, request: UpdateMachineRequest): Promise<Machine>
  destroyMachine(app: string, id: string, force: boolean): Promise<unknown>
  startMachine(app: string, id: string): Promise<unknown>
  cordonMachine(app: string, id: string): Promise<unknown>
  uncordonMachine(app: string, id: string): Promise<unknown>
  events(app: string, id: string): Promise<MachineEvent[]>
  createRelease(app: string, body: { image: string; strategy: string; description?: string }): Promise<ReleaseRecord>
  updateRelease(app: string, id: string, body: { status: ReleaseStatus; error?: string }): Promise<ReleaseRecord>
  listReleases(app: string, limit?: number): Promise<{ releases: ReleaseRecord[] }>
}

/** One line of progress: what the deployer does or waits for, and how far it got. */
export interface ProgressEvent {
  /** A stable word for scripts: plan, release, release_command, create, update, wait, health, cordon, uncordon, destroy, rollback, done. */
  step: string
  message: string
  group?: string
  machineId?: string
  /** k of n Machines of the current step. */
  done?: number
  total?: number
}

export type Progress = (event: ProgressEvent) => void

export const noProgress: Progress = () => undefined
