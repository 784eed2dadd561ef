import { InvalidArgumentError, isNotFound, type Machine, type MachineConfig } from '../core/index.js'
import {
  DEPLOY_STRATEGIES, deploySettings, machineConfigsForDeploy, maxUnavailableCount, releaseCommandMachineConfig,
  type AppConfig, type DeploySettings, type DeployStrategy,
} from '../config/index.js'
import { DeployAbortedError } from './errors.js'
import { delay, MachineOps, type ReplaceJournal } from './machine-ops.js'
import { batches, configForMachine, machinesByGroup } from './plan.js'
import { noProgress, type DeployApi, type Progress, type ReleaseStatus } from './ports.js'

// `hangar deploy` (flyctl's machine deploy, client side over the Machines API):
//
//   parse fly.toml ─► release record (running) ─► release command (one-shot Machine; fails → abort)
//        ─► per strategy, every process group:
//             rolling    a few Machines at a time: cordon, drain, update, wait started + checks, uncordon
//             immediate  every Machine updated at once, no waiting for checks
//             canary     one extra Machine with the new config must come up healthy, then rolling
//             bluegreen  a new cordoned set starts and passes its checks, then traffic moves to it
//                        (uncordon new, cordon old) and the old set is destroyed
//        ─► groups fly.toml no longer has are destroyed ─► release complete
//
// Any failure before the end undoes what this deploy changed (Machines it created are destroyed,
// Machines it updated get their previous config back, cordons are lifted), so the previous release
// keeps serving, and the release is recorded as failed.

export interface DeployOptions {
  api: DeployApi
  config: AppConfig
  /** Overrides `app` in fly.toml. */
  app?: string
  /** Overrides [build] image. */
  image?: string
  /** Overrides [deploy] strategy. */
  strategy?: DeployStrategy
  readLocalFile?: (localPath: string) => Uint8Array
  progress?: Progress
  /** Overrides [deploy] wait_timeout. */
  waitTimeoutMs?: number
  pollIntervalMs?: number
  drainMs?: number
  smokeMs?: number
  description?: string
}

export interface GroupResult { group: string; machines: string[]; created: number; updated: number; destroyed: number }

export interface DeployResult {
  app: string
  image: string
  strategy: DeployStrategy
  release: { id: string; version: number; status: ReleaseStatus }
  releaseCommand?: { machineId: string; exitCode: number }
  groups: GroupResult[]
  /** Process groups that had Machines but are gone from fly.toml (their Machines were destroyed). */
  removedGroups: string[]
}

export const DEFAULT_POLL_INTERVAL_MS = 250
export const DEFAULT_DRAIN_MS = 1_000
export const DEFAULT_SMOKE_MS = 2_000

interface Context {
  ops: MachineOps
  progress: Progress
  settings: DeploySettings
  targets: Map<string, MachineConfig>
  existing: Map<string, Machine[]>
  primaryRegion?: string
  results: Map<string, GroupResult>
}

const label = (group: string, index: number, total: number) => `${group} [${index}/${total}]`

function resultFor(ctx: Context, group: string): GroupResult {
  let result = ctx.results.get(group)
  if (!result) ctx.results.set(group, (result = { group, machines: [], created: 0, updated: 0, destroyed: 0 }))
  return result
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Creates `count` Machines of a group and (unless `wait` is false) waits until all are healthy. */
async function createMachines(ctx: Context, group: string, target: MachineConfig, templates: Array<Machine | undefined>, options: { cordoned?: boolean; wait?: boolean; created: Machine[] }): Promise<Machine[]> {
  const made: Machine[] = []
  for (let i = 0; i < templates.length; i++) {
    const template = templates[i]
    const machine = await ctx.ops.create({
      config: configForMachine(target, template),
      region: template?.region ?? ctx.primaryRegion,
      ...(options.cordoned ? { skip_service_registration: true } : {}),
    }, label(group, i + 1, templates.length))
    made.push(machine)
    options.created.push(machine)
    resultFor(ctx, group).created++
  }
  if (options.wait !== false) await waitAll(ctx, group, made, target)
  return made
}

/** Waits for Machines in parallel, reporting k of n healthy. */
async function waitAll(ctx: Context, group: string, machines: Machine[], config: MachineConfig): Promise<void> {
  let healthy = 0
  ctx.progress({ step: 'wait', message: `${group}: waiting for ${machines.length} Machine(s) to start and pass health checks`, group, done: 0, total: machines.length })
  const outcomes = await Promise.allSettled(machines.map(async (m, i) => {
    await ctx.ops.waitHealthy(m.id, { version: m.instance_id, config, label: label(group, i + 1, machines.length) })
    healthy++
    ctx.progress({ step: 'wait', message: `${group}: ${healthy} of ${machines.length} Machine(s) healthy`, group, machineId: m.id, done: healthy, total: machines.length })
  }))
  const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')
  if (failure) throw failure.reason
}

async function destroyAll(ctx: Context, machines: readonly Machine[], why: string): Promise<string[]> {
  const failures: string[] = []
  for (const machine of machines) {
    try {
      await ctx.ops.destroy(machine.id, why)
    } catch (err) {
      if (!isNotFound(err) && (err as { status?: number }).status !== 404) failures.push(`${machine.id}: ${messageOf(err)}`)
    }
  }
  return failures
}

/** Undoes a failed strategy and rethrows as DeployAbortedError. */
async function undo(ctx: Context, err: unknown, created: readonly Machine[], journal: ReplaceJournal): Promise<never> {
  const aborted = err instanceof DeployAbortedError ? err : new DeployAbortedError(messageOf(err), { cause: err })
  ctx.progress({ step: 'rollback', message: `deploy failed: ${aborted.message}; putting the previous release back` })
  const failures = [
    ...await destroyAll(ctx, created, 'rollback'),
    ...await ctx.ops.restore(journal),
  ]
  aborted.rolledBack = true
  aborted.restoreFailures = failures
  ctx.progress({ step: 'rollback', message: failures.length === 0 ? 'rollback done: the previous release is serving' : `rollback incomplete: ${failures.join('; ')}` })
  throw aborted
}

async function rolling(ctx: Context): Promise<void> {
  const journal: ReplaceJournal = []
  const created: Machine[] = []
  try {
    for (const [group, target] of ctx.targets) {
      const machines = ctx.existing.get(group) ?? []
      if (machines.length === 0) {
        await createMachines(ctx, group, target, [undefined], { created })
        continue
      }
      const size = maxUnavailableCount(ctx.settings, machines.length)
      ctx.progress({ step: 'update', message: `${group}: updating ${machines.length} Machine(s), ${size} at a time`, group, done: 0, total: machines.length })
      let done = 0
      for (const batch of batches(machines, size)) {
        const outcomes = await Promise.allSettled(batch.map((machine) => {
          const index = machines.indexOf(machine) + 1
          return ctx.ops.replace(machine, configForMachine(target, machine), label(group, index, machines.length), journal)
        }))
        const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')
        if (failure) throw failure.reason
        done += batch.length
        resultFor(ctx, group).updated += batch.length
        ctx.progress({ step: 'update', message: `${group}: ${done} of ${machines.length} Machine(s) updated and healthy`, group, done, total: machines.length })
      }
    }
  } catch (err) {
    return undo(ctx, err, created, journal)
  }
}

async function immediate(ctx: Context): Promise<void> {
  const journal: ReplaceJournal = []
  const created: Machine[] = []
  try {
    for (const [group, target] of ctx.targets) {
      const machines = ctx.existing.get(group) ?? []
      if (machines.length === 0) {
        await createMachines(ctx, group, target, [undefined], { created, wait: false })
        continue
      }
      ctx.progress({ step: 'update', message: `${group}: updating all ${machines.length} Machine(s) at once (immediate: no health checks)`, group, total: machines.length })
      const outcomes = await Promise.allSettled(machines.map(async (machine) => {
        const entry = { before: machine, cordoned: false, updated: false }
        journal.push(entry)
        await ctx.ops.options.api.updateMachine(ctx.ops.app, machine.id, { config: configForMachine(target, machine), current_version: machine.instance_id })
        entry.updated = true
      }))
      const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')
      if (failure) throw failure.reason
      resultFor(ctx, group).updated += machines.length
    }
  } catch (err) {
    return undo(ctx, err, created, journal.filter((e) => e.updated))
  }
}

async function canary(ctx: Context): Promise<void> {
  // reference: flyctl canary — one new Machine per group must come up healthy before any
  // existing Machine is touched; it is removed again, then the group rolls.
  for (const [group, target] of ctx.targets) {
    const machines = ctx.existing.get(group) ?? []
    if (machines.length === 0) continue
    const created: Machine[] = []
    try {
      ctx.progress({ step: 'create', message: `${group}: starting a canary Machine with the new release` })
      const [canaryMachine] = await createMachines(ctx, group, target, [machines[0]], { created })
      resultFor(ctx, group).created--
      ctx.progress({ step: 'destroy', message: `${group}: the canary is healthy; removing it and rolling the group` })
      if (ctx.ops.takesTraffic(canaryMachine!)) await ctx.ops.cordon(canaryMachine!, `${group} canary`)
      await ctx.ops.destroy(canaryMachine!.id, `${group} canary`)
    } catch (err) {
      return undo(ctx, err, created, [])
    }
  }
  return rolling(ctx)
}

async function bluegreen(ctx: Context): Promise<void> {
  const green: Machine[] = []
  const blue: Machine[] = []
  try {
    for (const [group, target] of ctx.targets) {
      const machines = ctx.existing.get(group) ?? []
      blue.push(...machines)
      const templates = machines.length > 0 ? machines : [undefined]
      ctx.progress({ step: 'create', message: `${group}: starting ${templates.length} green Machine(s) beside the ${machines.length} blue one(s)`, group, total: templates.length })
      await createMachines(ctx, group, target, templates, { cordoned: true, wait: false, created: green })
    }
    for (const [group, target] of ctx.targets) {
      const greens = green.filter((m) => (m.config.metadata?.fly_process_group ?? 'app') === group)
      await waitAll(ctx, group, greens, target)
    }
  } catch (err) {
    return undo(ctx, err, green, [])
  }
  // Every green Machine is healthy: switch traffic, then retire the blue set.
  ctx.progress({ step: 'uncordon', message: `switching traffic to ${green.length} green Machine(s)`, done: 0, total: green.length })
  for (const [i, machine] of green.entries()) {
    await ctx.ops.uncordon(machine.id, label('green', i + 1, green.length))
  }
  const routed = blue.filter((m) => ctx.ops.takesTraffic(m))
  if (routed.length > 0) {
    ctx.progress({ step: 'cordon', message: `cordoning ${routed.length} blue Machine(s) and draining ${ctx.ops.options.drainMs} ms` })
    for (const machine of routed) await ctx.ops.options.api.cordonMachine(ctx.ops.app, machine.id)
    await delay(ctx.ops.options.drainMs)
  }
  for (const [i, machine] of blue.entries()) {
    await ctx.ops.destroy(machine.id, label('blue', i + 1, blue.length))
    resultFor(ctx, (machine.config.metadata?.fly_process_group ?? 'app')).destroyed++
  }
}

const STRATEGIES: Record<DeployStrategy, (ctx: Context) => Promise<void>> = { rolling, immediate, canary, bluegreen }

/** Runs fly.toml's release_command in a one-shot Machine (auto_destroy) and waits for its exit. */
async function runReleaseCommand(ctx: Context, config: MachineConfig, timeoutMs: number): Promise<{ machineId: string; exitCode: number }> {
  const { api, app, pollIntervalMs } = ctx.ops.options
  const command = [...(config.init?.cmd ?? [])].join(' ')
  ctx.progress({ step: 'release_command', message: `running the release command: ${command}` })
  const machine = await api.createMachine(app, { config, region: ctx.primaryRegion })
  ctx.progress({ step: 'release_command', message: `release command Machine ${machine.id} started; waiting for it to exit (up to ${Math.round(timeoutMs / 1000)}s)`, machineId: machine.id })
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const current = await api.getMachine(app, machine.id)
    const exit = current.events.find((e) => e.type === 'exit' && e.request?.exit_event)?.request?.exit_event
    if (exit || ['destroyed', 'stopped', 'failed'].includes(current.state)) {
      const exitCode = exit?.exit_code ?? -1
      if (current.state !== 'destroyed') await api.destroyMachine(app, machine.id, true).catch(() => undefined)
      if (exitCode !== 0) throw new DeployAbortedError(`the release command \`${command}\` failed (exit code ${exitCode}); no Machine was changed`)
      ctx.progress({ step: 'release_command', message: 'the release command succeeded', machineId: machine.id })
      return { machineId: machine.id, exitCode }
    }
    if (Date.now() > deadline) {
      await api.destroyMachine(app, machine.id, true).catch(() => undefined)
      throw new DeployAbortedError(`the release command \`${command}\` did not finish within ${Math.round(timeoutMs / 1000)}s; no Machine was changed`)
    }
    await delay(pollIntervalMs)
  }
}

export async function deploy(options: DeployOptions): Promise<DeployResult> {
  const { api, config } = options
  const progress = options.progress ?? noProgress
  const app = options.app ?? config.app
  if (!app) throw new InvalidArgumentError('no app to deploy: set app in fly.toml or give --app')
  const settings = deploySettings(config)
  const strategy = options.strategy ?? settings.strategy
  if (!(DEPLOY_STRATEGIES as readonly string[]).includes(strategy)) throw new InvalidArgumentError(`strategy ${JSON.stringify(strategy)}: use ${DEPLOY_STRATEGIES.join(', ')}`)
  const image = options.image ?? config.build.image
  if (!image) throw new InvalidArgumentError('no image to deploy: pass --image or set image in the [build] section of fly.toml')
  // Every config problem shows up before anything changes.
  machineConfigsForDeploy(config, { image, readLocalFile: options.readLocalFile })
  try {
    await api.getApp(app)
  } catch (err) {
    if ((err as { status?: number }).status === 404 || isNotFound(err)) throw new InvalidArgumentError(`app ${app} does not exist: create it with \`hangar launch\` or \`hangar apps create ${app}\``)
    throw err
  }
  const ops = new MachineOps({
    api, app, progress,
    waitTimeoutMs: options.waitTimeoutMs ?? settings.waitTimeoutMs,
    pollIntervalMs: options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS,
    drainMs: options.drainMs ?? DEFAULT_DRAIN_MS,
    smokeMs: options.smokeMs ?? DEFAULT_SMOKE_MS,
  })
  const release = await api.createRelease(app, { image, strategy, ...(options.description ? { description: options.description } : {}) })
  progress({ step: 'release', message: `release v${release.version} of ${app}: ${image} (strategy ${strategy})` })
  const input = { image, releaseId: release.id, releaseVersion: release.version, readLocalFile: options.readLocalFile }
  const ctx: Context = {
    ops, progress, settings,
    targets: machineConfigsForDeploy(config, input),
    existing: new Map(),
    primaryRegion: config.primaryRegion,
    results: new Map(),
  }
  try {
    const releaseCommand = releaseCommandMachineConfig(config, input)
    const releaseCommandResult = releaseCommand ? await runReleaseCommand(ctx, releaseCommand, settings.releaseCommandTimeoutMs) : undefined
    ctx.existing = machinesByGroup(await api.listMachines(app), { managedOnly: true })
    const summary = [...ctx.targets.keys()].map((g) => `${g} (${ctx.existing.get(g)?.length ?? 0} Machine(s))`).join(', ')
    progress({ step: 'plan', message: `process groups: ${summary}` })
    await STRATEGIES[strategy](ctx)

    const removedGroups: string[] = []
    for (const [group, machines] of ctx.existing) {
      if (ctx.targets.has(group)) continue
      removedGroups.push(group)
      progress({ step: 'destroy', message: `${group}: fly.toml no longer has this process group; destroying its ${machines.length} Machine(s)`, group })
      const routed = machines.filter((m) => ops.takesTraffic(m))
      for (const machine of routed) await api.cordonMachine(app, machine.id)
      if (routed.length > 0) await delay(ops.options.drainMs)
      for (const machine of machines) await ops.destroy(machine.id, group)
    }

    const live = machinesByGroup(await api.listMachines(app), { managedOnly: true })
    for (const group of ctx.targets.keys()) resultFor(ctx, group).machines = (live.get(group) ?? []).map((m) => m.id)
    const done = await api.updateRelease(app, release.id, { status: 'complete' })
    progress({ step: 'done', message: `release v${release.version} is deployed` })
    return {
      app, image, strategy,
      release: { id: release.id, version: release.version, status: done.status },
      ...(releaseCommandResult ? { releaseCommand: releaseCommandResult } : {}),
      groups: [...ctx.targets.keys()].map((g) => resultFor(ctx, g)),
      removedGroups,
    }
  } catch (err) {
    const aborted = err instanceof DeployAbortedError ? err : new DeployAbortedError(messageOf(err), { cause: err })
    aborted.release = { id: release.id, version: release.version }
    await api.updateRelease(app, release.id, { status: 'failed', error: aborted.message.slice(0, 4000) }).catch(() => undefined)
    throw aborted
  }
}
