import type { Machine } from '../core/index.js'
import { DeployAbortedError } from './errors.js'
import { MachineOps, type ReplaceJournal } from './machine-ops.js'
import { machinesByGroup } from './plan.js'
import { noProgress, type DeployApi } from './ports.js'
import { DEFAULT_DRAIN_MS, DEFAULT_POLL_INTERVAL_MS, DEFAULT_SMOKE_MS } from './deployer.js'
import type { ScaleTiming } from './scale.js'

// After `hangar secrets set|unset` (without --stage), every Machine of the app is updated with its
// current config, one at a time, so it restarts with the new secrets in its env (the API hands the
// agent the app's secrets with each update). Machines that were running must come back healthy.

export interface RollResult { app: string; updated: string[] }

export async function rollMachines(options: ScaleTiming & { api: DeployApi; app: string }): Promise<RollResult> {
  const { api, app } = options
  const progress = options.progress ?? noProgress
  const ops = new MachineOps({
    api, app, progress,
    waitTimeoutMs: options.waitTimeoutMs ?? 5 * 60_000,
    pollIntervalMs: options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS,
    drainMs: options.drainMs ?? DEFAULT_DRAIN_MS,
    smokeMs: options.smokeMs ?? DEFAULT_SMOKE_MS,
  })
  const machines: Machine[] = [...machinesByGroup(await api.listMachines(app)).values()].flat()
  const result: RollResult = { app, updated: [] }
  if (machines.length === 0) {
    progress({ step: 'plan', message: `${app} has no Machines to restart; new ones get the secrets when they start` })
    return result
  }
  progress({ step: 'plan', message: `restarting ${machines.length} Machine(s) of ${app} with the new secrets, one at a time`, total: machines.length })
  const journal: ReplaceJournal = []
  for (const [i, machine] of machines.entries()) {
    try {
      await ops.replace(machine, structuredClone(machine.config), `${machine.config.metadata?.fly_process_group ?? 'app'} [${i + 1}/${machines.length}]`, journal)
    } catch (err) {
      // Its previous config is the same config: restoring only lifts the cordon.
      const entry = journal[journal.length - 1]
      if (entry?.cordoned) await ops.uncordon(entry.before.id, 'undo').catch(() => undefined)
      throw err instanceof DeployAbortedError ? err : new DeployAbortedError((err as Error).message, { cause: err })
    }
    result.updated.push(machine.id)
    progress({ step: 'update', message: `${i + 1} of ${machines.length} Machine(s) restarted`, done: i + 1, total: machines.length })
  }
  return result
}
