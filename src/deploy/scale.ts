import { InvalidArgumentError, type Machine, type MachineConfig, type MachineGuest } from '../core/index.js'
import { guestForSize, guestProblem, machineConfigsForDeploy, VM_SIZES, type AppConfig } from '../config/index.js'
import { DeployAbortedError } from './errors.js'
import { MachineOps, type MachineOpsOptions, type ReplaceJournal } from './machine-ops.js'
import { machinesByGroup, machinesToRemove } from './plan.js'
import { noProgress, type DeployApi, type Progress } from './ports.js'
import { DEFAULT_DRAIN_MS, DEFAULT_POLL_INTERVAL_MS, DEFAULT_SMOKE_MS } from './deployer.js'

// `hangar scale count` and `hangar scale vm` (flyctl scale): more Machines are clones of the
// group's newest one (or, for an empty group, built from fly.toml and the last release's image);
// fewer Machines removes stopped ones first, then the newest; a new size rolls the group one
// Machine at a time, each coming back healthy before the next.

export interface ScaleTiming {
  progress?: Progress
  waitTimeoutMs?: number
  pollIntervalMs?: number
  drainMs?: number
  smokeMs?: number
}

function opsFor(api: DeployApi, app: string, timing: ScaleTiming): MachineOps {
  const options: MachineOpsOptions = {
    api, app, progress: timing.progress ?? noProgress,
    waitTimeoutMs: timing.waitTimeoutMs ?? 5 * 60_000,
    pollIntervalMs: timing.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS,
    drainMs: timing.drainMs ?? DEFAULT_DRAIN_MS,
    smokeMs: timing.smokeMs ?? DEFAULT_SMOKE_MS,
  }
  return new MachineOps(options)
}

function pickGroup(groups: Map<string, Machine[]>, requested: string | undefined, config: AppConfig | undefined): string {
  if (requested) return requested
  const known = new Set([...groups.keys(), ...Object.keys(config?.processes ?? {})])
  if (known.size <= 1) return [...known][0] ?? 'app'
  if (known.has('app')) return 'app'
  throw new InvalidArgumentError(`the app has several process groups (${[...known].sort().join(', ')}): give --process-group`)
}

export interface ScaleCountOptions extends ScaleTiming {
  api: DeployApi
  app: string
  count: number
  region?: string
  group?: string
  /** fly.toml, for a group that has no Machine to clone yet. */
  config?: AppConfig
}

export interface ScaleCountResult { app: string; group: string; region?: string; before: number; after: number; created: string[]; destroyed: string[] }

export async function scaleCount(options: ScaleCountOptions): Promise<ScaleCountResult> {
  const { api, app, count, region } = options
  if (!Number.isInteger(count) || count < 0 || count > 100) throw new InvalidArgumentError(`count must be a whole number from 0 to 100, got ${count}`)
  const ops = opsFor(api, app, options)
  const progress = options.progress ?? noProgress
  const groups = machinesByGroup(await api.listMachines(app), { managedOnly: true })
  const group = pickGroup(groups, options.group, options.config)
  const machines = groups.get(group) ?? []
  const scoped = region ? machines.filter((m) => m.region === region) : machines
  const result: ScaleCountResult = { app, group, ...(region ? { region } : {}), before: scoped.length, after: scoped.length, created: [], destroyed: [] }
  const where = `${group}${region ? ` in ${region}` : ''}`
  if (count === scoped.length) {
    progress({ step: 'plan', message: `${where} already has ${count} Machine(s)` })
    return result
  }
  if (count > scoped.length) {
    const template = [...(scoped.length ? scoped : machines)].sort((a, b) => b.created_at.localeCompare(a.created_at))[0]
    const config = template ? structuredClone(template.config) : await configFromFlyToml(api, app, group, options.config)
    const add = count - scoped.length
    progress({ step: 'plan', message: `${where}: adding ${add} Machine(s) (${scoped.length} → ${count})`, group, total: add })
    const created: Machine[] = []
    try {
      for (let i = 0; i < add; i++) {
        created.push(await ops.create({ config, region: region ?? template?.region ?? options.config?.primaryRegion }, `${group} [${i + 1}/${add}]`))
      }
      let healthy = 0
      await Promise.all(created.map(async (m, i) => {
        await ops.waitHealthy(m.id, { version: m.instance_id, config, label: `${group} [${i + 1}/${add}]` })
        progress({ step: 'wait', message: `${where}: ${++healthy} of ${add} new Machine(s) healthy`, group, done: healthy, total: add })
      }))
    } catch (err) {
      for (const m of created) await ops.destroy(m.id, 'undo scale').catch(() => undefined)
      throw err instanceof DeployAbortedError ? err : new DeployAbortedError((err as Error).message, { cause: err })
    }
    result.created = created.map((m) => m.id)
  } else {
    const remove = machinesToRemove(scoped, scoped.length - count)
    progress({ step: 'plan', message: `${where}: removing ${remove.length} Machine(s) (${scoped.length} → ${count})`, group, total: remove.length })
    for (const [i, machine] of remove.entries()) {
      if (ops.takesTraffic(machine)) await ops.cordon(machine, `${group} [${i + 1}/${remove.length}]`)
      await ops.destroy(machine.id, `${group} [${i + 1}/${remove.length}]`)
      result.destroyed.push(machine.id)
    }
  }
  result.after = count
  return result
}

/** A group without Machines: fly.toml's config for it with the last successful release's image. */
async function configFromFlyToml(api: DeployApi, app: string, group: string, config: AppConfig | undefined): Promise<MachineConfig> {
  if (!config) throw new InvalidArgumentError(`process group ${group} has no Machine to copy; run this where the app's fly.toml is, or deploy first`)
  const { releases } = await api.listReleases(app, 20)
  const release = releases.find((r) => r.status === 'complete')
  if (!release) throw new InvalidArgumentError(`app ${app} has no successful release to take an image from: run \`hangar deploy\` first`)
  const target = machineConfigsForDeploy(config, { image: release.image, releaseId: release.id, releaseVersion: release.version }).get(group)
  if (!target) throw new InvalidArgumentError(`fly.toml has no process group ${group}`)
  return target
}

export interface ScaleVmOptions extends ScaleTiming {
  api: DeployApi
  app: string
  size: string
  memoryMb?: number
  group?: string
}

export interface ScaleVmResult { app: string; guest: MachineGuest; updated: string[]; unchanged: string[] }

export async function scaleVm(options: ScaleVmOptions): Promise<ScaleVmResult> {
  const { api, app } = options
  const preset = guestForSize(options.size)
  if (!preset) throw new InvalidArgumentError(`unknown VM size ${JSON.stringify(options.size)}; use one of ${Object.keys(VM_SIZES).join(', ')}`)
  const guest: MachineGuest = { ...preset, ...(options.memoryMb !== undefined ? { memory_mb: options.memoryMb } : {}) }
  const problem = guestProblem(guest)
  if (problem) throw new InvalidArgumentError(`${options.size}: ${problem}`)
  const progress = options.progress ?? noProgress
  const ops = opsFor(api, app, options)
  const groups = machinesByGroup(await api.listMachines(app))
  const machines = options.group ? groups.get(options.group) ?? [] : [...groups.values()].flat()
  const result: ScaleVmResult = { app, guest, updated: [], unchanged: [] }
  const todo = machines.filter((m) => m.config.guest?.cpus !== guest.cpus || m.config.guest?.memory_mb !== guest.memory_mb || (m.config.guest?.cpu_kind ?? 'shared') !== guest.cpu_kind)
  result.unchanged = machines.filter((m) => !todo.includes(m)).map((m) => m.id)
  progress({ step: 'plan', message: `resizing ${todo.length} of ${machines.length} Machine(s) to ${options.size}${options.memoryMb ? ` with ${options.memoryMb} MB` : ''}, one at a time`, total: todo.length })
  const journal: ReplaceJournal = []
  for (const [i, machine] of todo.entries()) {
    try {
      await ops.replace(machine, { ...structuredClone(machine.config), guest }, `${machine.config.metadata?.fly_process_group ?? 'app'} [${i + 1}/${todo.length}]`, journal)
    } catch (err) {
      const failures = await ops.restore(journal.slice(-1))
      const aborted = err instanceof DeployAbortedError ? err : new DeployAbortedError((err as Error).message, { cause: err })
      aborted.rolledBack = true
      aborted.restoreFailures = failures
      throw aborted
    }
    result.updated.push(machine.id)
    progress({ step: 'update', message: `${i + 1} of ${todo.length} Machine(s) resized`, done: i + 1, total: todo.length })
  }
  return result
}
