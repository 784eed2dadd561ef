import type { Machine } from '../core/index.js'
import { groupOf, LIVE_STATES, releaseVersionOf } from './plan.js'
import type { DeployApi, ReleaseRecord } from './ports.js'

// `hangar status`: the app's Machines by region with their state, checks and release version,
// and the latest release.

export interface MachineStatus {
  id: string
  name: string
  group: string
  region: string
  state: string
  /** The release version the Machine runs (fly_release_version), if deployed by `hangar deploy`. */
  release?: number
  version: string
  image: string
  checks: { passing: number; total: number; failing: string[] }
  cordoned: boolean
  updated_at: string
}

export interface AppStatus {
  app: string
  machines: MachineStatus[]
  /** region → Machines there (ids), in region order. */
  regions: Record<string, string[]>
  release?: ReleaseRecord
}

export function machineStatus(machine: Machine): MachineStatus {
  const checks = machine.checks ?? []
  const release = releaseVersionOf(machine)
  return {
    id: machine.id, name: machine.name, group: groupOf(machine), region: machine.region, state: machine.state,
    ...(release !== undefined && /^\d+$/.test(release) ? { release: Number(release) } : {}),
    version: machine.instance_id, image: machine.config.image,
    checks: { passing: checks.filter((c) => c.status === 'passing').length, total: checks.length, failing: checks.filter((c) => c.status !== 'passing').map((c) => `${c.name}: ${c.status}`) },
    cordoned: machine.cordoned === true, updated_at: machine.updated_at,
  }
}

export async function appStatus(api: DeployApi, app: string): Promise<AppStatus> {
  await api.getApp(app)
  const machines = (await api.listMachines(app)).filter((m) => LIVE_STATES.has(m.state)).map(machineStatus)
    .sort((a, b) => a.region.localeCompare(b.region) || a.group.localeCompare(b.group) || a.id.localeCompare(b.id))
  const regions: Record<string, string[]> = {}
  for (const m of machines) (regions[m.region] ??= []).push(m.id)
  const { releases } = await api.listReleases(app, 1)
  return { app, machines, regions, ...(releases[0] ? { release: releases[0] } : {}) }
}
