import { InvalidArgumentError, formatDurationMs, type MachineCheck, type MachineConfig, type MachineFile, type MachineInit, type MachineMount, type MachineService } from '../core/index.js'
import { appliesToGroup, defaultProcessGroup, dropUndefined, processGroups, type AppConfig, type DeployStrategy, type ServiceConfig } from './app-config.js'
import { shellSplit } from './shell-split.js'

// flyctl internal/appconfig machines.go (ToMachineConfig after Flatten) as the model: one
// MachineConfig per process group, carrying only the services, checks, mounts, files and metrics
// that apply to that group (reference §2: "services and mounts pick a group with processes").

/** reference §1.5: metadata keys the platform reads. */
export const METADATA_KEYS = {
  processGroup: 'fly_process_group',
  releaseId: 'fly_release_id',
  releaseVersion: 'fly_release_version',
  platformVersion: 'fly_platform_version',
} as const
export const PLATFORM_VERSION = 'v2'
/** flyctl's group name for the release_command Machine. */
export const RELEASE_COMMAND_GROUP = 'fly_app_release_command'

export interface DeployInput {
  /** The image to run; overrides [build] image. One of the two is required. */
  image?: string
  releaseId?: string
  releaseVersion?: number | string
  /** Reads a [[files]] local_path (relative to fly.toml). Without it, local_path files are refused. */
  readLocalFile?: (localPath: string) => Uint8Array
}

export interface DeploySettings {
  strategy: DeployStrategy
  maxUnavailable: number
  waitTimeoutMs: number
  /** The release command as argv, run once per deploy before Machines are updated. */
  releaseCommand?: string[]
  releaseCommandTimeoutMs: number
}

function resolveImage(config: AppConfig, input: DeployInput): string {
  const image = input.image ?? config.build.image
  if (!image) throw new InvalidArgumentError('no image to deploy: pass --image or set image in the [build] section of fly.toml')
  return image
}

function machineService(service: ServiceConfig): MachineService {
  return dropUndefined({
    protocol: service.protocol,
    internal_port: service.internalPort,
    ports: service.ports.map((p) => structuredClone(p)),
    concurrency: { ...service.concurrency },
    autostop: service.autostop,
    autostart: service.autostart,
    min_machines_running: service.minMachinesRunning,
    checks: service.checks.length > 0 ? service.checks.map((c) => structuredClone(c)) : undefined,
  })
}

function fileFor(file: AppConfig['files'][number], input: DeployInput): MachineFile {
  // flyctl File.toMachineFile: raw_value and local_path contents travel base64-encoded.
  if (file.secretName !== undefined) return { guest_path: file.guestPath, secret_name: file.secretName }
  if (file.rawValue !== undefined) return { guest_path: file.guestPath, raw_value: Buffer.from(file.rawValue, 'utf8').toString('base64') }
  if (!input.readLocalFile) throw new InvalidArgumentError(`[[files]] ${file.guestPath}: local_path ${file.localPath} cannot be read here`)
  let content: Uint8Array
  try {
    content = input.readLocalFile(file.localPath!)
  } catch (err) {
    throw new InvalidArgumentError(`[[files]] ${file.guestPath}: cannot read local_path ${file.localPath}: ${(err as Error).message}`, { cause: err })
  }
  return { guest_path: file.guestPath, raw_value: Buffer.from(content).toString('base64') }
}

function stopConfig(config: AppConfig): MachineConfig['stop_config'] {
  if (config.killSignal === undefined && config.killTimeoutMs === undefined) return undefined
  return dropUndefined({ signal: config.killSignal, timeout: config.killTimeoutMs === undefined ? undefined : formatDurationMs(config.killTimeoutMs) })
}

/** The MachineConfig for one process group. */
export function machineConfigForGroup(config: AppConfig, group: string, input: DeployInput): MachineConfig {
  const groups = processGroups(config)
  if (!groups.includes(group)) throw new InvalidArgumentError(`unknown process group ${JSON.stringify(group)} (fly.toml defines: ${groups.join(', ')})`)
  const defaultGroup = defaultProcessGroup(config)
  const applies = (processes: readonly string[]) => appliesToGroup(processes, group, defaultGroup)

  // Init: the group's command split shell-style (flyctl InitCmd); experimental.cmd when the group
  // has none; experimental entrypoint/exec as given.
  const command = config.processes[group]
  const cmd = command ? shellSplit(command, `processes.${group}`) : config.experimental.cmd
  const init: MachineInit = dropUndefined({
    cmd: cmd && cmd.length > 0 ? cmd : undefined,
    entrypoint: config.experimental.entrypoint,
    exec: config.experimental.exec,
    swap_size_mb: config.swapSizeMb,
  })

  const env: Record<string, string> = { ...config.env, FLY_PROCESS_GROUP: group }
  if (config.primaryRegion) env.PRIMARY_REGION = config.primaryRegion

  const metadata: Record<string, string> = { [METADATA_KEYS.processGroup]: group, [METADATA_KEYS.platformVersion]: PLATFORM_VERSION }
  if (input.releaseId !== undefined) metadata[METADATA_KEYS.releaseId] = input.releaseId
  if (input.releaseVersion !== undefined) metadata[METADATA_KEYS.releaseVersion] = String(input.releaseVersion)

  const services = [...(config.httpService ? [config.httpService] : []), ...config.services].filter((s) => applies(s.processes)).map(machineService)

  const checks: Record<string, MachineCheck> = {}
  for (const [name, check] of Object.entries(config.checks)) {
    if (!applies(check.processes)) continue
    const { processes: _processes, ...machineCheck } = check
    if (machineCheck.port === undefined) {
      // flyctl: a check without a port takes the group's http_service internal_port.
      const http = config.httpService && applies(config.httpService.processes) ? config.httpService : undefined
      if (!http) throw new InvalidArgumentError(`check ${JSON.stringify(name)} for process group ${group} has no port and the group has no http_service to take it from`)
      machineCheck.port = http.internalPort
    }
    checks[name] = structuredClone(machineCheck)
  }

  const mounts: MachineMount[] = config.mounts.filter((m) => applies(m.processes)).map((m) => dropUndefined({
    name: m.source,
    path: m.destination,
    extend_threshold_percent: m.autoExtendSizeThreshold,
    add_size_gb: m.autoExtendSizeIncrementGb,
    size_gb_limit: m.autoExtendSizeLimitGb,
  }))

  // [[vm]]: the section naming this group wins over one without processes (flyctl Flatten).
  const vm = config.vm.find((v) => v.processes.includes(group)) ?? config.vm.find((v) => v.processes.length === 0)
  const guest = vm ? { ...vm.guest } : undefined
  if (guest && config.hostDedicationId && !guest.host_dedication_id) guest.host_dedication_id = config.hostDedicationId

  const restartEntry = config.restart.find((x) => x.processes.includes(group)) ?? config.restart.find((x) => x.processes.length === 0)
  const restart = restartEntry ? dropUndefined({ policy: restartEntry.policy, max_retries: restartEntry.maxRetries }) : undefined

  const files = config.files.filter((f) => applies(f.processes)).map((f) => fileFor(f, input))
  const metrics = config.metrics.find((m) => applies(m.processes))

  return dropUndefined({
    image: resolveImage(config, input),
    init: Object.keys(init).length > 0 ? init : undefined,
    guest,
    env,
    metadata,
    services: services.length > 0 ? services : undefined,
    checks: Object.keys(checks).length > 0 ? checks : undefined,
    mounts: mounts.length > 0 ? mounts : undefined,
    restart,
    stop_config: stopConfig(config),
    files: files.length > 0 ? files : undefined,
    metrics: metrics ? dropUndefined({ port: metrics.port, path: metrics.path, https: metrics.https }) : undefined,
  })
}

/** One MachineConfig per process group, in group-name order. Groups without a [[vm]] carry no
 * guest: the deployer keeps an existing Machine's size (`hangar scale vm`) and gives new Machines
 * DEFAULT_GUEST, as flyctl does. */
export function machineConfigsForDeploy(config: AppConfig, input: DeployInput): Map<string, MachineConfig> {
  const image = resolveImage(config, input)
  const configs = new Map<string, MachineConfig>()
  for (const group of processGroups(config)) configs.set(group, machineConfigForGroup(config, group, { ...input, image }))
  return configs
}

/** [deploy] as the deployer needs it. */
export function deploySettings(config: AppConfig): DeploySettings {
  return dropUndefined({
    strategy: config.deploy.strategy,
    maxUnavailable: config.deploy.maxUnavailable,
    waitTimeoutMs: config.deploy.waitTimeoutMs,
    releaseCommand: config.deploy.releaseCommand === undefined ? undefined : shellSplit(config.deploy.releaseCommand, 'deploy.release_command'),
    releaseCommandTimeoutMs: config.deploy.releaseCommandTimeoutMs,
  })
}

/** How many Machines of a group of `size` may be down at once during a rolling deploy. */
export function maxUnavailableCount(settings: Pick<DeploySettings, 'maxUnavailable'>, size: number): number {
  if (settings.maxUnavailable >= 1) return Math.min(size, Math.floor(settings.maxUnavailable))
  return Math.max(1, Math.floor(size * settings.maxUnavailable))
}

/** flyctl ToReleaseMachineConfig: a one-shot Machine that runs release_command and is destroyed
 * when it exits (restart no, auto_destroy), not registered in DNS or services. */
export function releaseCommandMachineConfig(config: AppConfig, input: DeployInput): MachineConfig | undefined {
  const settings = deploySettings(config)
  if (!settings.releaseCommand) return undefined
  const env: Record<string, string> = { ...config.env, RELEASE_COMMAND: '1', FLY_PROCESS_GROUP: RELEASE_COMMAND_GROUP }
  if (config.primaryRegion) env.PRIMARY_REGION = config.primaryRegion
  const metadata: Record<string, string> = { [METADATA_KEYS.processGroup]: RELEASE_COMMAND_GROUP, [METADATA_KEYS.platformVersion]: PLATFORM_VERSION }
  if (input.releaseId !== undefined) metadata[METADATA_KEYS.releaseId] = input.releaseId
  if (input.releaseVersion !== undefined) metadata[METADATA_KEYS.releaseVersion] = String(input.releaseVersion)
  const machine: MachineConfig = {
    image: resolveImage(config, input),
    init: dropUndefined({ cmd: settings.releaseCommand, entrypoint: config.experimental.entrypoint, swap_size_mb: config.swapSizeMb }),
    guest: config.deploy.releaseCommandVm ? { ...config.deploy.releaseCommandVm.guest } : undefined,
    env,
    metadata,
    restart: { policy: 'no' },
    auto_destroy: true,
    dns: { skip_registration: true },
    stop_config: stopConfig(config),
  }
  return dropUndefined(machine)
}
