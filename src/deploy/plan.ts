import { InvalidArgumentError, type CheckStatus, type Machine, type MachineConfig } from '../core/index.js'
import { DEFAULT_GUEST, METADATA_KEYS, RELEASE_COMMAND_GROUP } from '../config/index.js'

// The pure part of a deploy: which Machines belong to which process group, what config each gets,
// how a group is cut into rolling batches, and whether a Machine counts as healthy. No I/O here:
// the deployer (deployer.ts) feeds it what the API answers.

export const LIVE_STATES: ReadonlySet<string> = new Set(['created', 'starting', 'started', 'stopping', 'stopped', 'suspending', 'suspended', 'replacing', 'updating', 'restarting', 'failed', 'creating'])

/** The process group a Machine was deployed as (reference §1.5 `fly_process_group`). */
export function groupOf(machine: Pick<Machine, 'config'>): string {
  return machine.config.metadata?.[METADATA_KEYS.processGroup] ?? 'app'
}

export function releaseVersionOf(machine: Pick<Machine, 'config'>): string | undefined {
  return machine.config.metadata?.[METADATA_KEYS.releaseVersion]
}

/** Whether a deploy made the Machine (flyctl: only Machines with `fly_platform_version` are
 * managed by deploys; ones made with `hangar machine run` are left alone). */
export function isDeployManaged(machine: Pick<Machine, 'config'>): boolean {
  return machine.config.metadata?.[METADATA_KEYS.platformVersion] !== undefined
}

/** The app's live Machines by process group, oldest first; the release command's one-shot
 * Machines are not part of any group. With `managedOnly`, Machines no deploy made are left out. */
export function machinesByGroup(machines: readonly Machine[], options: { managedOnly?: boolean } = {}): Map<string, Machine[]> {
  const groups = new Map<string, Machine[]>()
  for (const machine of [...machines].sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id))) {
    if (!LIVE_STATES.has(machine.state)) continue
    if (options.managedOnly && !isDeployManaged(machine)) continue
    const group = groupOf(machine)
    if (group === RELEASE_COMMAND_GROUP) continue
    const list = groups.get(group) ?? []
    list.push(machine)
    groups.set(group, list)
  }
  return groups
}

/** The config a Machine gets from a deploy: fly.toml's, keeping the Machine's size when fly.toml
 * names none (so `hangar scale vm` survives a deploy, as with flyctl), its mounts and its own
 * metadata. New
 * Machines without a [[vm]] get the default size. */
export function configForMachine(target: MachineConfig, existing?: Pick<Machine, 'config'>): MachineConfig {
  const config = structuredClone(target)
  // Metadata the user set on the Machine stays; the platform's keys come from the deploy.
  if (existing?.config.metadata) config.metadata = { ...existing.config.metadata, ...config.metadata }
  if (!config.guest) config.guest = existing?.config.guest ? structuredClone(existing.config.guest) : { ...DEFAULT_GUEST }
  if (!config.mounts && existing?.config.mounts) config.mounts = structuredClone(existing.config.mounts)
  return config
}

/** Cuts `items` into batches of at most `size`, in order. */
export function batches<T>(items: readonly T[], size: number): T[][] {
  if (!Number.isInteger(size) || size < 1) throw new InvalidArgumentError(`batch size must be a whole number of at least 1, got ${size}`)
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

/** How many checks a Machine of this config reports (service checks and top-level checks). */
export function expectedCheckCount(config: MachineConfig): number {
  let count = Object.keys(config.checks ?? {}).length
  for (const service of config.services ?? []) count += service.checks?.length ?? 0
  return count
}

export type HealthVerdict =
  | { kind: 'healthy' }
  | { kind: 'waiting'; reason: string }
  | { kind: 'failed'; reason: string }

function describeChecks(checks: readonly CheckStatus[]): string {
  return checks.map((c) => `${c.name} ${c.status}${c.status === 'passing' ? '' : ` (${c.output})`}`).join(', ')
}

/** Whether a Machine is up: the version asked for, started, and every check passing. States a
 * Machine does not leave on its own (failed, stopped, destroyed) fail at once. */
export function healthOf(machine: Machine, options: { version?: string; expectedChecks: number }): HealthVerdict {
  if (options.version && machine.instance_id !== options.version && machine.state !== 'destroyed') {
    return { kind: 'waiting', reason: `version ${machine.instance_id} is still running (waiting for ${options.version})` }
  }
  switch (machine.state) {
    case 'failed': case 'stopped': case 'destroyed': case 'suspended': {
      const exit = machine.events.find((e) => e.request?.exit_event)?.request?.exit_event
      const error = machine.events.find((e) => typeof e.request?.error === 'string')?.request?.error as string | undefined
      const detail = error ? `: ${error}` : exit ? ` (its process exited with code ${exit.exit_code}${exit.oom_killed ? ', out of memory' : ''})` : ''
      return { kind: 'failed', reason: `Machine ${machine.id} is ${machine.state}${detail}` }
    }
    case 'started': break
    default: return { kind: 'waiting', reason: `Machine ${machine.id} is ${machine.state}` }
  }
  const checks = machine.checks ?? []
  if (checks.length < options.expectedChecks) return { kind: 'waiting', reason: `waiting for ${options.expectedChecks} health check(s) to report` }
  const notPassing = checks.filter((c) => c.status !== 'passing')
  if (notPassing.length === 0) return { kind: 'healthy' }
  return { kind: 'waiting', reason: `${checks.length - notPassing.length} of ${checks.length} health checks passing: ${describeChecks(notPassing)}` }
}

/** Which Machines `hangar scale count` removes: those not running first, then the newest. */
export function machinesToRemove(machines: readonly Machine[], count: number): Machine[] {
  const rank = (m: Machine) => (m.state === 'started' ? 1 : 0)
  return [...machines].sort((a, b) => rank(a) - rank(b) || b.created_at.localeCompare(a.created_at)).slice(0, Math.max(0, count))
}
