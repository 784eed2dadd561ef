import { parse, TomlError } from 'smol-toml'
import { formatDurationMs, normaliseSignal, type Autostop, type MachineCheck, type MachineGuest, type MachinePort, type MachineServiceCheck, type MachineServiceConcurrency, type HTTPOptions, type TLSOptions, type RestartPolicy } from '../core/index.js'
import { ConfigReader, FlyTomlError, isTable, type ConfigWarning, type Table } from './config-reader.js'
import type { TomlPath } from './toml-locations.js'
import { DEFAULT_VM_SIZE, guestForSize, guestProblem, MEMORY_MB_PER_CPU, VM_SIZES } from './vm-sizes.js'

// reference §2 (superfly/docs reference/configuration) and flyctl internal/appconfig as the model:
// fly.toml is accepted as it is. This file turns the TOML document into an AppConfig: defaults
// filled in, legacy shapes (boolean autostop, `[mounts]` as a table, `processes = []`, integer
// check intervals, "soft,hard" concurrency strings, env written as numbers) normalised, every type
// error reported with its line and key, unknown keys returned as warnings.

export const DEFAULT_PROCESS_GROUP = 'app'
export const DEPLOY_STRATEGIES = ['rolling', 'immediate', 'bluegreen', 'canary'] as const
export type DeployStrategy = (typeof DEPLOY_STRATEGIES)[number]
export const PORT_HANDLERS = ['http', 'tls', 'pg_tls', 'proxy_proto'] as const

export interface BuildConfig {
  image?: string
  dockerfile?: string
  ignorefile?: string
  buildTarget?: string
  builder?: string
  buildpacks?: string[]
  builtin?: string
  args: Record<string, string>
}

export interface DeployConfig {
  strategy: DeployStrategy
  /** A fraction of the group (0 < x < 1) or a count of Machines (≥ 1). flyctl's default 0.33. */
  maxUnavailable: number
  /** How long to wait for each Machine to start and pass its checks. */
  waitTimeoutMs: number
  releaseCommand?: string
  releaseCommandTimeoutMs: number
  releaseCommandVm?: VmConfig
}

export interface ServiceConfig {
  /** Which section it came from; `http_service` expands to ports 80 and 443. */
  source: 'http_service' | 'services'
  protocol: 'tcp' | 'udp'
  internalPort: number
  ports: MachinePort[]
  concurrency: MachineServiceConcurrency
  autostop: Autostop
  autostart: boolean
  minMachinesRunning: number
  checks: MachineServiceCheck[]
  /** Empty: the default process group only (flyctl Flatten). */
  processes: string[]
}

export interface TopLevelCheckConfig extends MachineCheck {
  processes: string[]
}

export interface VmConfig {
  guest: MachineGuest
  /** Empty: every process group, unless a [[vm]] names the group. */
  processes: string[]
}

export interface MountConfig {
  source: string
  destination: string
  initialSizeGb?: number
  snapshotRetention?: number
  scheduledSnapshots?: boolean
  autoExtendSizeThreshold?: number
  autoExtendSizeIncrementGb?: number
  autoExtendSizeLimitGb?: number
  processes: string[]
}

export interface RestartConfig {
  /** The API's word: fly.toml `never` is `no` (flyctl parseRestartPolicy). */
  policy: RestartPolicy
  maxRetries?: number
  processes: string[]
}

export interface FileConfig {
  guestPath: string
  localPath?: string
  rawValue?: string
  secretName?: string
  processes: string[]
}

export interface MetricsConfig {
  port: number
  path: string
  https?: boolean
  processes: string[]
}

export interface ExperimentalConfig {
  cmd?: string[]
  entrypoint?: string[]
  exec?: string[]
}

export interface AppConfig {
  app?: string
  primaryRegion?: string
  killSignal?: string
  killTimeoutMs?: number
  swapSizeMb?: number
  consoleCommand?: string
  hostDedicationId?: string
  build: BuildConfig
  deploy: DeployConfig
  env: Record<string, string>
  /** group → command ("" runs the image's CMD). Empty when fly.toml has no [processes]. */
  processes: Record<string, string>
  httpService?: ServiceConfig
  services: ServiceConfig[]
  checks: Record<string, TopLevelCheckConfig>
  vm: VmConfig[]
  mounts: MountConfig[]
  restart: RestartConfig[]
  files: FileConfig[]
  metrics: MetricsConfig[]
  experimental: ExperimentalConfig
}

export interface ParsedFlyToml {
  config: AppConfig
  warnings: ConfigWarning[]
}

export const DEFAULT_WAIT_TIMEOUT_MS = 5 * 60_000
export const DEFAULT_RELEASE_COMMAND_TIMEOUT_MS = 5 * 60_000
export const DEFAULT_MAX_UNAVAILABLE = 0.33
export const DEFAULT_SOFT_LIMIT = 20
const PROCESS_GROUP_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/i

const ROOT_KEYS = ['app', 'primary_region', 'kill_signal', 'kill_timeout', 'swap_size_mb', 'console_command', 'host_dedication_id', 'build', 'deploy', 'env', 'processes', 'http_service', 'services', 'checks', 'vm', 'mounts', 'mount', 'restart', 'files', 'statics', 'metrics', 'experimental']
const NOT_SUPPORTED = (what: string) => `${what} is not supported by Hangar and is ignored`

/** Parses fly.toml text. Throws FlyTomlError (an InvalidArgumentError) listing every problem with
 * its line; returns the config and the warnings (unknown keys) otherwise. */
export function parseFlyToml(source: string, options: { fileName?: string } = {}): ParsedFlyToml {
  const fileName = options.fileName ?? 'fly.toml'
  let document: Table
  try {
    document = parse(source, { unsafeKeyBehaviour: 'throw', maxDepth: 32 }) as Table
  } catch (err) {
    if (err instanceof TomlError) {
      const detail = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '')
      throw new FlyTomlError(fileName, [{ line: err.line, key: '', message: `TOML syntax error at column ${err.column}: ${detail}` }])
    }
    throw err
  }
  const reader = new ConfigReader(source)
  const config = readAppConfig(document, reader)
  if (reader.problems.length > 0) throw new FlyTomlError(fileName, byLine(reader.problems))
  return { config, warnings: byLine(reader.warnings) }
}

/** In file order (stable for problems on one line); problems without a line go last. */
function byLine<T extends { line?: number }>(items: readonly T[]): T[] {
  return items.map((item, i) => ({ item, i })).sort((a, b) => (a.item.line ?? Infinity) - (b.item.line ?? Infinity) || a.i - b.i).map(({ item }) => item)
}

function readAppConfig(doc: Table, r: ConfigReader): AppConfig {
  r.checkKeys(doc, [], ROOT_KEYS, {
    machine_checks: NOT_SUPPORTED('machine_checks (test Machines run during a deploy)'),
    machine_config: NOT_SUPPORTED('machine_config'),
    container: NOT_SUPPORTED('container'),
  })

  let killSignal: string | undefined
  const rawSignal = r.string(doc, 'kill_signal', [])
  if (rawSignal !== undefined) {
    try { killSignal = normaliseSignal(rawSignal, 'kill_signal') } catch { r.problem(['kill_signal'], `${JSON.stringify(rawSignal)} is not a signal (use a name such as "SIGINT" or "SIGTERM")`) }
  }
  if (doc.statics !== undefined && !(Array.isArray(doc.statics) && doc.statics.length === 0)) {
    r.problem(['statics'], 'statics are not supported by Hangar; serve static files from the app itself')
  }

  const processes = readProcesses(doc.processes, r)
  const groups = Object.keys(processes).length > 0 ? Object.keys(processes).sort() : [DEFAULT_PROCESS_GROUP]
  const httpService = doc.http_service === undefined ? undefined : readHttpService(doc.http_service, r)

  const config: AppConfig = {
    app: r.string(doc, 'app', [], { nonEmpty: true }),
    primaryRegion: r.string(doc, 'primary_region', [], { nonEmpty: true }),
    killSignal,
    killTimeoutMs: r.duration(doc, 'kill_timeout', [], 'seconds'),
    swapSizeMb: r.integer(doc, 'swap_size_mb', [], { min: 0 }),
    consoleCommand: r.string(doc, 'console_command', []),
    hostDedicationId: r.string(doc, 'host_dedication_id', []),
    build: readBuild(doc.build, r),
    deploy: readDeploy(doc.deploy, r),
    env: readEnv(doc.env, r),
    processes,
    httpService,
    services: r.tableOrList(doc.services, ['services']).map(({ table, path }) => readService(table, path, r)).filter((s): s is ServiceConfig => s !== undefined),
    checks: readTopLevelChecks(doc.checks, r),
    vm: r.tableOrList(doc.vm, ['vm']).map(({ table, path }) => readVm(table, path, r)).filter((v): v is VmConfig => v !== undefined),
    mounts: [...r.tableOrList(doc.mounts, ['mounts']), ...r.tableOrList(doc.mount, ['mount'])].map(({ table, path }) => readMount(table, path, r)).filter((m): m is MountConfig => m !== undefined),
    restart: r.tableOrList(doc.restart, ['restart']).map(({ table, path }) => readRestart(table, path, r)).filter((x): x is RestartConfig => x !== undefined),
    files: r.tableOrList(doc.files, ['files']).map(({ table, path }) => readFile(table, path, r)).filter((f): f is FileConfig => f !== undefined),
    metrics: r.tableOrList(doc.metrics, ['metrics']).map(({ table, path }) => readMetrics(table, path, r)).filter((m): m is MetricsConfig => m !== undefined),
    experimental: readExperimental(doc.experimental, r),
  }
  for (const key of Object.keys(config) as Array<keyof AppConfig>) if (config[key] === undefined) delete config[key]
  checkProcessReferences(doc, config, groups, r)
  return config
}

// ---------------------------------------------------------------- top-level sections

function readProcesses(value: unknown, r: ConfigReader): Record<string, string> {
  if (value === undefined) return {}
  // Old fly.toml files carry `processes = []` at the top level; flyctl drops it.
  if (Array.isArray(value) && value.length === 0) return {}
  const table = r.table(value, ['processes'])
  if (!table) return {}
  const out: Record<string, string> = {}
  for (const [name, command] of Object.entries(table)) {
    if (!PROCESS_GROUP_NAME.test(name)) { r.problem(['processes', name], 'a process group name uses letters, digits, "-" and "_" (at most 63 characters)'); continue }
    if (typeof command !== 'string') { r.wrongType(['processes', name], 'a command string', command); continue }
    out[name] = command
  }
  return out
}

function readEnv(value: unknown, r: ConfigReader): Record<string, string> {
  if (value === undefined) return {}
  // flyctl patchEnv: `[[env]]` (a list of tables) merges; numbers and booleans become strings.
  const parts = Array.isArray(value) ? value.map((v, i) => ({ v, path: ['env', i] as TomlPath })) : [{ v: value, path: ['env'] as TomlPath }]
  const env: Record<string, string> = {}
  for (const { v, path } of parts) {
    const table = r.table(v, path)
    if (!table) continue
    for (const [k, val] of Object.entries(table)) {
      if (typeof val === 'string') env[k] = val
      else if (typeof val === 'number' || typeof val === 'boolean') env[k] = String(val)
      else r.wrongType([...path, k], 'a string', val)
    }
  }
  return env
}

function readBuild(value: unknown, r: ConfigReader): BuildConfig {
  const table = r.table(value, ['build'])
  if (!table) return { args: {} }
  const path = ['build']
  // Hangar deploys images; the builder keys are accepted so that fly.toml files work unchanged.
  r.checkKeys(table, path, ['image', 'dockerfile', 'ignorefile', 'build-target', 'builder', 'buildpacks', 'builtin', 'args', 'settings', 'build_target', 'docker_build_target', 'compression', 'compression_level', 'persist'])
  const build: BuildConfig = {
    image: r.string(table, 'image', path, { nonEmpty: true }),
    dockerfile: r.string(table, 'dockerfile', path),
    ignorefile: r.string(table, 'ignorefile', path),
    buildTarget: r.string(table, 'build-target', path) ?? r.string(table, 'build_target', path),
    builder: r.string(table, 'builder', path),
    buildpacks: r.stringList(table, 'buildpacks', path),
    builtin: r.string(table, 'builtin', path),
    args: r.stringMap(table, 'args', path) ?? {},
  }
  return dropUndefined(build)
}

function readDeploy(value: unknown, r: ConfigReader): DeployConfig {
  const table = r.table(value, ['deploy']) ?? {}
  const path = ['deploy']
  r.checkKeys(table, path, ['strategy', 'max_unavailable', 'wait_timeout', 'release_command', 'release_command_timeout', 'release_command_vm'], {
    seed_command: NOT_SUPPORTED('seed_command'),
  })
  let maxUnavailable = r.number(table, 'max_unavailable', path) ?? DEFAULT_MAX_UNAVAILABLE
  if (!(maxUnavailable > 0) || (maxUnavailable > 1 && !Number.isInteger(maxUnavailable))) {
    r.problem([...path, 'max_unavailable'], `must be a fraction between 0 and 1 or a whole number of Machines, got ${maxUnavailable}`)
    maxUnavailable = DEFAULT_MAX_UNAVAILABLE
  }
  const strategy = r.string(table, 'strategy', path, { oneOf: DEPLOY_STRATEGIES }) as DeployStrategy | undefined
  const releaseCommandVm = table.release_command_vm === undefined ? undefined : r.table(table.release_command_vm, [...path, 'release_command_vm'])
  return dropUndefined({
    strategy: strategy ?? 'rolling',
    maxUnavailable,
    waitTimeoutMs: r.duration(table, 'wait_timeout', path, 'seconds') ?? DEFAULT_WAIT_TIMEOUT_MS,
    releaseCommand: r.string(table, 'release_command', path, { nonEmpty: true }),
    releaseCommandTimeoutMs: r.duration(table, 'release_command_timeout', path, 'seconds') ?? DEFAULT_RELEASE_COMMAND_TIMEOUT_MS,
    releaseCommandVm: releaseCommandVm ? readVm(releaseCommandVm, [...path, 'release_command_vm'], r, false) : undefined,
  })
}

function readExperimental(value: unknown, r: ConfigReader): ExperimentalConfig {
  const table = r.table(value, ['experimental'])
  if (!table) return {}
  const path = ['experimental']
  r.checkKeys(table, path, ['cmd', 'entrypoint', 'exec'], {
    // Knobs of Fly's platform that have no meaning here; silent, as flyctl keeps them too.
    auto_rollback: '', enable_consul: '', enable_etcd: '', allowed_public_ports: '', private_network: '', lazy_load_images: '', use_zstd: '', attached: '',
    machine_config: NOT_SUPPORTED('experimental.machine_config'),
  })
  return dropUndefined({
    cmd: r.stringOrList(table, 'cmd', path),
    entrypoint: r.stringOrList(table, 'entrypoint', path),
    exec: r.stringOrList(table, 'exec', path),
  })
}

// ---------------------------------------------------------------- services

function readAutostop(table: Table, path: TomlPath, r: ConfigReader): Autostop {
  const value = table.auto_stop_machines
  // reference §2: "off" (default) / "stop" / "suspend"; the legacy booleans mean off/stop.
  if (value === undefined) return 'off'
  if (value === true) return 'stop'
  if (value === false) return 'off'
  if (value === 'off' || value === 'stop' || value === 'suspend') return value
  r.problem([...path, 'auto_stop_machines'], `must be "off", "stop", "suspend" (or true/false), got ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`)
  return 'off'
}

function readConcurrency(value: unknown, path: TomlPath, r: ConfigReader): MachineServiceConcurrency {
  let table: Table | undefined
  if (typeof value === 'string') {
    // flyctl patches: old files wrote concurrency = "20,25" meaning soft,hard for requests.
    const match = /^\s*(\d+)\s*,\s*(\d+)\s*$/.exec(value)
    if (!match) { r.problem(path, `expected a table or "soft,hard", got ${JSON.stringify(value)}`); return { type: 'connections', soft_limit: DEFAULT_SOFT_LIMIT } }
    table = { type: 'requests', soft_limit: Number(match[1]), hard_limit: Number(match[2]) }
  } else {
    table = value === undefined ? {} : r.table(value, path) ?? {}
    r.checkKeys(table, path, ['type', 'soft_limit', 'hard_limit'])
  }
  const type = (r.string(table, 'type', path, { oneOf: ['connections', 'requests'] }) ?? 'connections') as 'connections' | 'requests'
  const hard = r.integer(table, 'hard_limit', path, { min: 1 })
  // reference §2 / concurrency docs: soft_limit defaults to 20 and hard_limit to unlimited; a hard
  // limit under 20 with no soft limit makes the soft limit equal to it.
  let soft = r.integer(table, 'soft_limit', path, { min: 1 }) ?? (hard !== undefined ? Math.min(DEFAULT_SOFT_LIMIT, hard) : DEFAULT_SOFT_LIMIT)
  if (hard !== undefined && soft > hard) {
    r.problem([...path, 'soft_limit'], `soft_limit (${soft}) must not exceed hard_limit (${hard})`)
    soft = hard
  }
  return hard === undefined ? { type, soft_limit: soft } : { type, soft_limit: soft, hard_limit: hard }
}

function readTlsOptions(value: unknown, path: TomlPath, r: ConfigReader): TLSOptions | undefined {
  const table = r.table(value, path)
  if (!table) return undefined
  r.checkKeys(table, path, ['alpn', 'versions', 'default_self_signed'])
  const versions = r.stringList(table, 'versions', path)
  versions?.forEach((v, i) => { if (v !== 'TLSv1.2' && v !== 'TLSv1.3') r.problem([...path, 'versions', i], `must be "TLSv1.2" or "TLSv1.3", got ${JSON.stringify(v)}`) })
  return dropUndefined({ alpn: r.stringList(table, 'alpn', path), versions, default_self_signed: r.boolean(table, 'default_self_signed', path) })
}

function readHttpOptions(value: unknown, path: TomlPath, r: ConfigReader): HTTPOptions | undefined {
  const table = r.table(value, path)
  if (!table) return undefined
  r.checkKeys(table, path, ['compress', 'h2_backend', 'idle_timeout', 'headers_read_timeout', 'response', 'replay_cache'])
  let response: HTTPOptions['response']
  if (table.response !== undefined) {
    const responsePath = [...path, 'response']
    const rt = r.table(table.response, responsePath)
    if (rt) {
      r.checkKeys(rt, responsePath, ['pristine', 'headers'])
      const headers = rt.headers === undefined ? undefined : r.table(rt.headers, [...responsePath, 'headers'])
      if (headers) {
        // A header is set to a string, to several strings, or removed with false.
        for (const [name, v] of Object.entries(headers)) {
          const ok = typeof v === 'string' || typeof v === 'boolean' || (Array.isArray(v) && v.every((x) => typeof x === 'string'))
          if (!ok) r.wrongType([...responsePath, 'headers', name], 'a string, an array of strings or false', v)
        }
      }
      response = dropUndefined({ pristine: r.boolean(rt, 'pristine', responsePath), headers: headers ? { ...headers } : undefined })
    }
  }
  const replay = r.tableOrList(table.replay_cache, [...path, 'replay_cache']).map(({ table: t, path: p }) => {
    r.checkKeys(t, p, ['path_prefix', 'ttl_seconds', 'type', 'name', 'allow_bypass'])
    const entry = {
      path_prefix: r.string(t, 'path_prefix', p, { nonEmpty: true }),
      ttl_seconds: r.integer(t, 'ttl_seconds', p, { min: 1 }),
      type: r.string(t, 'type', p, { oneOf: ['cookie', 'header'] }) as 'cookie' | 'header' | undefined,
      name: r.string(t, 'name', p, { nonEmpty: true }),
      allow_bypass: r.boolean(t, 'allow_bypass', p),
    }
    if (entry.path_prefix === undefined || entry.ttl_seconds === undefined || entry.type === undefined || entry.name === undefined) {
      r.problem(p, 'a replay_cache entry needs path_prefix, ttl_seconds, type and name')
    }
    return dropUndefined(entry) as NonNullable<HTTPOptions['replay_cache']>[number]
  })
  return dropUndefined({
    compress: r.boolean(table, 'compress', path),
    h2_backend: r.boolean(table, 'h2_backend', path),
    idle_timeout: r.integer(table, 'idle_timeout', path, { min: 0 }),
    headers_read_timeout: r.integer(table, 'headers_read_timeout', path, { min: 0 }),
    response,
    replay_cache: replay.length > 0 ? replay : undefined,
  })
}

function readPort(table: Table, path: TomlPath, r: ConfigReader): MachinePort | undefined {
  r.checkKeys(table, path, ['port', 'start_port', 'end_port', 'handlers', 'force_https', 'tls_options', 'http_options', 'proxy_proto_options'])
  const port = r.port(table, 'port', path)
  const start = r.port(table, 'start_port', path)
  const end = r.port(table, 'end_port', path)
  if (port !== undefined && (start !== undefined || end !== undefined)) {
    r.problem(path, 'give either port or start_port and end_port, not both')
  } else if (port === undefined && (start === undefined || end === undefined)) {
    if (!('port' in table || 'start_port' in table || 'end_port' in table)) r.problem(path, 'a port needs port, or start_port and end_port')
    else if (start !== undefined || end !== undefined) r.problem(path, 'a port range needs both start_port and end_port')
  } else if (start !== undefined && end !== undefined && start > end) {
    r.problem([...path, 'end_port'], `end_port (${end}) is below start_port (${start})`)
  }
  const handlers = r.stringList(table, 'handlers', path)
  handlers?.forEach((h, i) => {
    if (!(PORT_HANDLERS as readonly string[]).includes(h)) r.problem([...path, 'handlers', i], `handler ${JSON.stringify(h)} is not one of ${PORT_HANDLERS.join(', ')}`)
  })
  let proxyProto: MachinePort['proxy_proto_options']
  if (table.proxy_proto_options !== undefined) {
    const pp = r.table(table.proxy_proto_options, [...path, 'proxy_proto_options'])
    if (pp) {
      r.checkKeys(pp, [...path, 'proxy_proto_options'], ['version'])
      proxyProto = dropUndefined({ version: r.string(pp, 'version', [...path, 'proxy_proto_options'], { oneOf: ['v1', 'v2'] }) as 'v1' | 'v2' | undefined })
    }
  }
  return dropUndefined({
    port,
    start_port: start,
    end_port: end,
    handlers,
    force_https: r.boolean(table, 'force_https', path),
    tls_options: table.tls_options === undefined ? undefined : readTlsOptions(table.tls_options, [...path, 'tls_options'], r),
    http_options: table.http_options === undefined ? undefined : readHttpOptions(table.http_options, [...path, 'http_options'], r),
    proxy_proto_options: proxyProto,
  })
}

const SERVICE_CHECK_KEYS = ['interval', 'timeout', 'grace_period']
const HTTP_CHECK_KEYS = [...SERVICE_CHECK_KEYS, 'method', 'path', 'protocol', 'tls_skip_verify', 'tls_server_name', 'headers']

function durationString(ms: number | undefined): string | undefined {
  return ms === undefined ? undefined : formatDurationMs(ms)
}

function readHeaders(table: Table, path: TomlPath, r: ConfigReader): Array<{ name: string; values: string[] }> | undefined {
  const headers = r.stringMap(table, 'headers', path)
  if (!headers) return undefined
  const list = Object.keys(headers).sort().map((name) => ({ name, values: [headers[name]!] }))
  return list.length > 0 ? list : undefined
}

function readServiceCheck(table: Table, path: TomlPath, type: 'tcp' | 'http', r: ConfigReader): MachineServiceCheck {
  // restart_limit only meant something on Fly's V1 (Nomad) platform; flyctl keeps it silently.
  r.checkKeys(table, path, type === 'tcp' ? SERVICE_CHECK_KEYS : HTTP_CHECK_KEYS, { restart_limit: '' })
  const check: MachineServiceCheck = {
    type,
    interval: durationString(r.duration(table, 'interval', path, 'milliseconds')),
    timeout: durationString(r.duration(table, 'timeout', path, 'milliseconds')),
    grace_period: durationString(r.duration(table, 'grace_period', path, 'milliseconds')),
  }
  if (type === 'http') {
    check.method = r.string(table, 'method', path)?.toUpperCase()
    check.path = r.string(table, 'path', path)
    check.protocol = r.string(table, 'protocol', path, { oneOf: ['http', 'https'] }) as 'http' | 'https' | undefined
    check.tls_skip_verify = r.boolean(table, 'tls_skip_verify', path)
    check.tls_server_name = r.string(table, 'tls_server_name', path)
    check.headers = readHeaders(table, path, r)
    if (check.path !== undefined && !check.path.startsWith('/')) r.problem([...path, 'path'], `must start with "/", got ${JSON.stringify(check.path)}`)
  }
  return dropUndefined(check)
}

function readCommonService(table: Table, path: TomlPath, r: ConfigReader) {
  return {
    autostop: readAutostop(table, path, r),
    autostart: r.boolean(table, 'auto_start_machines', path) ?? true,
    minMachinesRunning: r.integer(table, 'min_machines_running', path, { min: 0 }) ?? 0,
    concurrency: readConcurrency(table.concurrency, [...path, 'concurrency'], r),
    processes: r.stringList(table, 'processes', path) ?? [],
  }
}

function readHttpService(value: unknown, r: ConfigReader): ServiceConfig | undefined {
  const path = ['http_service']
  const table = r.table(value, path)
  if (!table) return undefined
  r.checkKeys(table, path, ['internal_port', 'force_https', 'auto_stop_machines', 'auto_start_machines', 'min_machines_running', 'processes', 'concurrency', 'http_options', 'tls_options', 'checks'], {
    machine_checks: NOT_SUPPORTED('machine_checks (test Machines run during a deploy)'),
  })
  const httpOptions = table.http_options === undefined ? undefined : readHttpOptions(table.http_options, [...path, 'http_options'], r)
  const tlsOptions = table.tls_options === undefined ? undefined : readTlsOptions(table.tls_options, [...path, 'tls_options'], r)
  const forceHttps = r.boolean(table, 'force_https', path) ?? false
  // reference §2: port 80 with the http handler (redirecting to https when force_https) and 443
  // with tls + http.
  const port80: MachinePort = dropUndefined({ port: 80, handlers: ['http'], force_https: forceHttps, http_options: httpOptions })
  const port443: MachinePort = dropUndefined({ port: 443, handlers: ['tls', 'http'], http_options: httpOptions, tls_options: tlsOptions })
  return {
    source: 'http_service',
    protocol: 'tcp',
    internalPort: r.port(table, 'internal_port', path) ?? 8080,
    ports: [port80, port443],
    ...readCommonService(table, path, r),
    checks: r.tableOrList(table.checks, [...path, 'checks']).map(({ table: t, path: p }) => readServiceCheck(t, p, 'http', r)),
  }
}

function readService(table: Table, path: TomlPath, r: ConfigReader): ServiceConfig | undefined {
  r.checkKeys(table, path, ['internal_port', 'protocol', 'auto_stop_machines', 'auto_start_machines', 'min_machines_running', 'processes', 'ports', 'concurrency', 'tcp_checks', 'http_checks'], {
    script_checks: '',
    machine_checks: NOT_SUPPORTED('machine_checks (test Machines run during a deploy)'),
  })
  const internalPort = r.port(table, 'internal_port', path)
  if (internalPort === undefined && !('internal_port' in table)) r.problem(path, 'a service needs internal_port (the port the app listens on inside the Machine)')
  const protocol = (r.string(table, 'protocol', path, { oneOf: ['tcp', 'udp'] }) ?? 'tcp') as 'tcp' | 'udp'
  const ports = r.tableOrList(table.ports, [...path, 'ports']).map(({ table: t, path: p }) => readPort(t, p, r)).filter((p): p is MachinePort => p !== undefined)
  const checks = [
    ...r.tableOrList(table.tcp_checks, [...path, 'tcp_checks']).map(({ table: t, path: p }) => readServiceCheck(t, p, 'tcp', r)),
    ...r.tableOrList(table.http_checks, [...path, 'http_checks']).map(({ table: t, path: p }) => readServiceCheck(t, p, 'http', r)),
  ]
  if (protocol === 'udp' && ports.some((p) => p.handlers && p.handlers.length > 0)) r.problem([...path, 'ports'], 'UDP services take no handlers')
  return { source: 'services', protocol, internalPort: internalPort ?? 0, ports, ...readCommonService(table, path, r), checks }
}

function readTopLevelChecks(value: unknown, r: ConfigReader): Record<string, TopLevelCheckConfig> {
  if (value === undefined) return {}
  const entries: Array<{ name: string; table: Table; path: TomlPath }> = []
  if (isTable(value)) {
    for (const [name, check] of Object.entries(value)) {
      const table = r.table(check, ['checks', name])
      if (table) entries.push({ name, table, path: ['checks', name] })
    }
  } else if (Array.isArray(value)) {
    // flyctl patchTopLevelChecks: an old list form where each check carries its name.
    value.forEach((item, i) => {
      const table = r.table(item, ['checks', i])
      if (!table) return
      const name = r.string(table, 'name', ['checks', i], { nonEmpty: true })
      if (name === undefined) r.problem(['checks', i], 'a check in a list needs a name')
      else entries.push({ name, table, path: ['checks', i] })
    })
  } else {
    r.wrongType(['checks'], 'a table of named checks', value)
  }
  const checks: Record<string, TopLevelCheckConfig> = {}
  for (const { name, table, path } of entries) {
    r.checkKeys(table, path, [...HTTP_CHECK_KEYS, 'type', 'port', 'processes', 'kind', 'name'])
    const type = r.string(table, 'type', path, { oneOf: ['http', 'tcp'] }) as 'http' | 'tcp' | undefined
    if (type === undefined && table.type === undefined) r.problem(path, 'a check needs type = "http" or "tcp"')
    const base = readServiceCheck(Object.fromEntries(Object.entries(table).filter(([k]) => HTTP_CHECK_KEYS.includes(k))), path, 'http', r)
    if (type === 'tcp') {
      for (const k of HTTP_CHECK_KEYS.filter((key) => !SERVICE_CHECK_KEYS.includes(key))) {
        if (k in table) r.problem([...path, k], `${k} applies only to http checks`)
      }
    }
    checks[name] = dropUndefined({
      ...base,
      type: type ?? 'http',
      port: r.port(table, 'port', path),
      kind: r.string(table, 'kind', path, { oneOf: ['informational', 'readiness'] }) as 'informational' | 'readiness' | undefined,
      processes: r.stringList(table, 'processes', path) ?? [],
    })
  }
  return checks
}

// ---------------------------------------------------------------- vm, mounts, restart, files, metrics

/** "1gb", "512mb", "2048" or 2048 → megabytes. */
function parseMemoryMb(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isInteger(value) && value > 0 ? value : undefined
  if (typeof value !== 'string') return undefined
  const match = /^\s*(\d+(?:\.\d+)?)\s*(gb|g|gib|mb|m|mib)?\s*$/i.exec(value)
  if (!match) return undefined
  const amount = Number(match[1])
  const unit = (match[2] ?? 'mb').toLowerCase()
  const mb = unit.startsWith('g') ? amount * 1024 : amount
  return Number.isInteger(mb) && mb > 0 ? mb : undefined
}

/** "10gb", "10GB", "10" or 10 → gigabytes (whole numbers: volumes are sized in GB). */
function parseSizeGb(table: Table, key: string, path: TomlPath, r: ConfigReader): number | undefined {
  const value = table[key]
  if (value === undefined) return undefined
  const match = typeof value === 'number' ? [String(value), String(value), 'gb'] : typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*(gb|g|gib|mb|m|mib)?\s*$/i.exec(value) : null
  if (!match) return r.wrongType([...path, key], 'a size like "10gb"', value)
  const amount = Number(match[1])
  const gb = (match[2] ?? 'gb').toLowerCase().startsWith('g') ? amount : amount / 1024
  if (!Number.isInteger(gb) || gb < 1) return r.problem([...path, key], `volumes are sized in whole gigabytes (at least 1), got ${JSON.stringify(value)}`)
  return gb
}

function readVm(table: Table, path: TomlPath, r: ConfigReader, allowProcesses = true): VmConfig | undefined {
  r.checkKeys(table, path, ['size', 'memory', 'memory_mb', 'cpus', 'cpu_kind', 'kernel_args', 'host_dedication_id', 'persist_rootfs', 'gpus', 'gpu_kind', ...(allowProcesses ? ['processes'] : [])])
  if (table.gpus !== undefined || table.gpu_kind !== undefined) {
    r.problem(path, 'GPU Machines are not supported by Hangar')
    return undefined
  }
  // flyctl toMachineGuest: start from the size preset (default shared-cpu-1x), then apply memory,
  // then the explicit guest fields.
  const size = r.string(table, 'size', path)
  if (size !== undefined && !VM_SIZES[size]) {
    r.problem([...path, 'size'], `unknown size ${JSON.stringify(size)}; use one of ${Object.keys(VM_SIZES).join(', ')}`)
    return undefined
  }
  const guest: MachineGuest = { ...guestForSize(size ?? DEFAULT_VM_SIZE)! }
  let memoryGiven = false
  if (table.memory !== undefined) {
    const mb = parseMemoryMb(table.memory)
    if (mb === undefined) return r.problem([...path, 'memory'], `expected a size like "1gb" or "512mb" (or a number of MB), got ${JSON.stringify(table.memory)}`)
    guest.memory_mb = mb
    memoryGiven = true
  }
  const memoryMb = r.integer(table, 'memory_mb', path, { min: 1 })
  if (memoryMb !== undefined) { guest.memory_mb = memoryMb; memoryGiven = true }
  const cpuKind = r.string(table, 'cpu_kind', path, { oneOf: ['shared', 'performance'] }) as 'shared' | 'performance' | undefined
  const cpus = r.integer(table, 'cpus', path, { min: 1, max: 16 })
  if (cpuKind !== undefined) guest.cpu_kind = cpuKind
  if (cpus !== undefined) guest.cpus = cpus
  // More or bigger CPUs than the preset without a memory setting: take the minimum those CPUs
  // need (cpus = 2 alone is shared-cpu-2x; cpu_kind = "performance" alone is performance-1x).
  if (!memoryGiven) guest.memory_mb = Math.max(guest.memory_mb!, MEMORY_MB_PER_CPU[guest.cpu_kind!].min * guest.cpus!)
  const kernelArgs = r.stringList(table, 'kernel_args', path)
  if (kernelArgs) guest.kernel_args = kernelArgs
  const hostDedicationId = r.string(table, 'host_dedication_id', path)
  if (hostDedicationId) guest.host_dedication_id = hostDedicationId
  const persist = r.string(table, 'persist_rootfs', path, { oneOf: ['never', 'always', 'restart'] }) as MachineGuest['persist_rootfs']
  if (persist) guest.persist_rootfs = persist
  const problem = guestProblem(guest)
  if (problem) return r.problem(path, problem)
  return { guest, processes: allowProcesses ? r.stringList(table, 'processes', path) ?? [] : [] }
}

function readMount(table: Table, path: TomlPath, r: ConfigReader): MountConfig | undefined {
  r.checkKeys(table, path, ['source', 'destination', 'initial_size', 'snapshot_retention', 'scheduled_snapshots', 'auto_extend_size_threshold', 'auto_extend_size_increment', 'auto_extend_size_limit', 'processes'])
  const source = r.string(table, 'source', path, { nonEmpty: true })
  const destination = r.string(table, 'destination', path, { nonEmpty: true })
  if (source === undefined && table.source === undefined) r.problem(path, 'a mount needs source (the volume name)')
  if (destination === undefined && table.destination === undefined) r.problem(path, 'a mount needs destination (where the volume appears in the Machine)')
  if (destination !== undefined) {
    if (!destination.startsWith('/')) r.problem([...path, 'destination'], `must be an absolute path, got ${JSON.stringify(destination)}`)
    else if (destination.replace(/\/+$/, '') === '') r.problem([...path, 'destination'], 'a volume cannot be mounted at "/"')
  }
  if (source !== undefined && !/^[a-zA-Z0-9_]{1,30}$/.test(source)) r.problem([...path, 'source'], 'a volume name uses letters, digits and "_" (at most 30 characters)')
  const mount: MountConfig = {
    source: source ?? '',
    destination: destination ?? '',
    initialSizeGb: parseSizeGb(table, 'initial_size', path, r),
    snapshotRetention: r.integer(table, 'snapshot_retention', path, { min: 1, max: 60 }),
    scheduledSnapshots: r.boolean(table, 'scheduled_snapshots', path),
    autoExtendSizeThreshold: r.integer(table, 'auto_extend_size_threshold', path, { min: 1, max: 99 }),
    autoExtendSizeIncrementGb: parseSizeGb(table, 'auto_extend_size_increment', path, r),
    autoExtendSizeLimitGb: parseSizeGb(table, 'auto_extend_size_limit', path, r),
    processes: r.stringList(table, 'processes', path) ?? [],
  }
  return dropUndefined(mount)
}

const RESTART_POLICIES: Readonly<Record<string, RestartPolicy>> = { always: 'always', never: 'no', 'on-failure': 'on-failure' }

function readRestart(table: Table, path: TomlPath, r: ConfigReader): RestartConfig | undefined {
  r.checkKeys(table, path, ['policy', 'retries', 'processes'])
  const policy = r.string(table, 'policy', path, { oneOf: Object.keys(RESTART_POLICIES) })
  if (policy === undefined) {
    if (table.policy === undefined) r.problem(path, 'a restart section needs policy = "always", "never" or "on-failure"')
    return undefined
  }
  return dropUndefined({ policy: RESTART_POLICIES[policy]!, maxRetries: r.integer(table, 'retries', path, { min: 0 }), processes: r.stringList(table, 'processes', path) ?? [] })
}

function readFile(table: Table, path: TomlPath, r: ConfigReader): FileConfig | undefined {
  r.checkKeys(table, path, ['guest_path', 'local_path', 'raw_value', 'secret_name', 'processes'])
  const guestPath = r.string(table, 'guest_path', path, { nonEmpty: true })
  if (guestPath === undefined) {
    if (table.guest_path === undefined) r.problem(path, 'a file needs guest_path')
    return undefined
  }
  if (!guestPath.startsWith('/')) r.problem([...path, 'guest_path'], `must be an absolute path, got ${JSON.stringify(guestPath)}`)
  const file: FileConfig = dropUndefined({
    guestPath,
    localPath: r.string(table, 'local_path', path, { nonEmpty: true }),
    rawValue: r.string(table, 'raw_value', path),
    secretName: r.string(table, 'secret_name', path, { nonEmpty: true }),
    processes: r.stringList(table, 'processes', path) ?? [],
  })
  const sources = ['localPath', 'rawValue', 'secretName'].filter((k) => file[k as keyof FileConfig] !== undefined)
  if (sources.length !== 1) r.problem(path, 'a file needs exactly one of local_path, raw_value or secret_name')
  return file
}

function readMetrics(table: Table, path: TomlPath, r: ConfigReader): MetricsConfig | undefined {
  r.checkKeys(table, path, ['port', 'path', 'https', 'processes'])
  const port = r.port(table, 'port', path)
  if (port === undefined) {
    if (table.port === undefined) r.problem(path, 'metrics need a port')
    return undefined
  }
  return dropUndefined({ port, path: r.string(table, 'path', path) ?? '/metrics', https: r.boolean(table, 'https', path), processes: r.stringList(table, 'processes', path) ?? [] })
}

// ---------------------------------------------------------------- cross checks

function checkProcessReferences(doc: Table, config: AppConfig, groups: readonly string[], r: ConfigReader): void {
  const check = (processes: readonly string[], path: TomlPath) => {
    processes.forEach((name, i) => {
      if (!groups.includes(name)) {
        r.problem([...path, 'processes', i], `unknown process group ${JSON.stringify(name)} (this fly.toml defines: ${groups.join(', ')})`)
      }
    })
  }
  const listPath = (key: string, i: number): TomlPath => (Array.isArray(doc[key]) ? [key, i] : [key])
  if (config.httpService) check(config.httpService.processes, ['http_service'])
  config.services.forEach((s, i) => check(s.processes, listPath('services', i)))
  for (const [name, c] of Object.entries(config.checks)) check(c.processes, ['checks', name])
  config.vm.forEach((v, i) => check(v.processes, listPath('vm', i)))
  config.mounts.forEach((m, i) => check(m.processes, listPath(doc.mounts !== undefined ? 'mounts' : 'mount', i)))
  config.restart.forEach((x, i) => check(x.processes, listPath('restart', i)))
  config.files.forEach((f, i) => check(f.processes, listPath('files', i)))
  config.metrics.forEach((m, i) => check(m.processes, listPath('metrics', i)))

  const defaultGroup = defaultProcessGroup(config)
  for (const group of groups) {
    const mounts = config.mounts.filter((m) => appliesToGroup(m.processes, group, defaultGroup))
    if (mounts.length > 1) r.problem(['mounts'], `process group ${group} has ${mounts.length} mounts; a Machine mounts at most one volume`)
    const vms = config.vm.filter((v) => v.processes.includes(group))
    if (vms.length > 1) r.problem(['vm'], `${vms.length} [[vm]] sections name process group ${group}; give it one`)
    const publicPorts: Array<{ from: number; to: number }> = []
    for (const service of [...(config.httpService ? [config.httpService] : []), ...config.services]) {
      if (!appliesToGroup(service.processes, group, defaultGroup)) continue
      for (const port of service.ports) {
        const from = port.port ?? port.start_port
        const to = port.port ?? port.end_port
        if (from === undefined || to === undefined) continue
        const clash = publicPorts.find((p) => from <= p.to && p.from <= to && service.protocol !== 'udp')
        if (clash) r.problem([service.source === 'http_service' ? 'http_service' : 'services'], `port ${from === to ? from : `${from}-${to}`} is served twice in process group ${group}`)
        if (service.protocol !== 'udp') publicPorts.push({ from, to })
      }
    }
  }
}

// ---------------------------------------------------------------- process groups

/** The groups Machines are created for: the [processes] keys sorted, or ["app"]. */
export function processGroups(config: AppConfig): string[] {
  const names = Object.keys(config.processes)
  return names.length > 0 ? names.sort() : [DEFAULT_PROCESS_GROUP]
}

/** flyctl DefaultProcessName: "app" when defined (or nothing is), else the first group by name. */
export function defaultProcessGroup(config: AppConfig): string {
  const groups = processGroups(config)
  return groups.includes(DEFAULT_PROCESS_GROUP) ? DEFAULT_PROCESS_GROUP : groups[0]!
}

/** flyctl Flatten: a section with `processes` applies to those groups; without, to the default
 * group only. */
export function appliesToGroup(processes: readonly string[], group: string, defaultGroup: string): boolean {
  return processes.length === 0 ? group === defaultGroup : processes.includes(group)
}

/** Drops keys whose value is undefined so configs compare and serialise cleanly. */
export function dropUndefined<T extends object>(value: T): T {
  for (const key of Object.keys(value) as Array<keyof T>) if (value[key] === undefined) delete value[key]
  return value
}

