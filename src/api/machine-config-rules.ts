import { InvalidArgumentError, MACHINE_NAME_PATTERN, normaliseSignal, parseDurationMs, type CreateMachineRequest, type MachineConfig } from '../core/index.js'
import { parseImageReference } from '../images/index.js'

// What the spec's types cannot say about a Machine config (reference §1.5): an image is required,
// memory comes in 256 MB steps within the per-CPU bounds, ports are ports, limits are ordered.
// Checked in the API before anything reaches a host, so a bad config never makes a Machine.

const KNOWN_HANDLERS = new Set(['http', 'tls', 'pg_tls', 'proxy_proto', 'edge_http'])
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const MAX_FILE_BYTES = 1024 * 1024

const fail = (message: string): never => { throw new InvalidArgumentError(message) }

const isPort = (n: unknown) => typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 65535

export function checkMachineConfig(config: MachineConfig | undefined, path = 'config'): asserts config is MachineConfig {
  if (!config || typeof config !== 'object') fail(`${path} is required`)
  const c = config as MachineConfig
  if (typeof c.image !== 'string' || c.image.trim() === '') fail(`${path}.image is required (a registry reference like "registry.example.com/app:v1")`)
  try { parseImageReference(c.image) } catch (err) { fail(`${path}.image: ${(err as Error).message}`) }

  const guest = c.guest
  if (guest) {
    const cpus = guest.cpus ?? 1
    const kind = guest.cpu_kind ?? 'shared'
    if (kind !== 'shared' && kind !== 'performance') fail(`${path}.guest.cpu_kind must be "shared" or "performance", got "${kind}"`)
    if (![1, 2, 4, 8, 16].includes(cpus)) fail(`${path}.guest.cpus must be 1, 2, 4, 8 or 16, got ${cpus}`)
    if (guest.memory_mb !== undefined) {
      // reference §1.5: memory in multiples of 256 MB; at most 2048 MB per shared CPU, 8192 per performance CPU.
      const perCpuMax = kind === 'performance' ? 8192 : 2048
      if (guest.memory_mb < 256 || guest.memory_mb % 256 !== 0) fail(`${path}.guest.memory_mb must be a multiple of 256 (at least 256), got ${guest.memory_mb}`)
      if (guest.memory_mb > perCpuMax * cpus) fail(`${path}.guest.memory_mb ${guest.memory_mb} exceeds ${perCpuMax * cpus} MB for ${cpus} ${kind} CPU(s)`)
    }
  }

  for (const [key, value] of Object.entries(c.env ?? {})) {
    if (!ENV_NAME.test(key)) fail(`${path}.env: "${key.slice(0, 64)}" is not a valid environment variable name`)
    if (value.length > 64 * 1024) fail(`${path}.env.${key}: value longer than 64 KiB`)
  }
  for (const key of Object.keys(c.metadata ?? {})) {
    if (!/^[A-Za-z0-9_.-]{1,63}$/.test(key)) fail(`${path}.metadata: key "${key.slice(0, 64)}" must be 1–63 letters, digits, '_', '.' or '-'`)
  }

  c.services?.forEach((service, i) => {
    const at = `${path}.services[${i}]`
    if (service.protocol !== undefined && service.protocol !== 'tcp' && service.protocol !== 'udp') fail(`${at}.protocol must be "tcp" or "udp", got "${service.protocol}"`)
    if (service.internal_port === undefined || !isPort(service.internal_port)) fail(`${at}.internal_port must be a port number (1–65535)`)
    service.ports?.forEach((port, j) => {
      const pat = `${at}.ports[${j}]`
      if (port.port !== undefined) {
        if (!isPort(port.port)) fail(`${pat}.port must be 1–65535, got ${port.port}`)
      } else if (port.start_port !== undefined || port.end_port !== undefined) {
        if (!isPort(port.start_port) || !isPort(port.end_port) || port.start_port! > port.end_port!) fail(`${pat}: start_port and end_port must be ports with start_port ≤ end_port`)
      } else {
        fail(`${pat}: give port, or start_port and end_port`)
      }
      for (const handler of port.handlers ?? []) if (!KNOWN_HANDLERS.has(handler)) fail(`${pat}.handlers: unknown handler "${handler}" (use http, tls, pg_tls or proxy_proto)`)
      if (port.proxy_proto_options?.version && !['v1', 'v2'].includes(port.proxy_proto_options.version)) fail(`${pat}.proxy_proto_options.version must be "v1" or "v2"`)
    })
    const concurrency = service.concurrency
    if (concurrency) {
      if (concurrency.type !== undefined && concurrency.type !== 'connections' && concurrency.type !== 'requests') fail(`${at}.concurrency.type must be "connections" or "requests"`)
      if (concurrency.soft_limit !== undefined && concurrency.soft_limit < 1) fail(`${at}.concurrency.soft_limit must be at least 1`)
      if (concurrency.hard_limit !== undefined && concurrency.hard_limit < 1) fail(`${at}.concurrency.hard_limit must be at least 1`)
      if (concurrency.soft_limit !== undefined && concurrency.hard_limit !== undefined && concurrency.soft_limit > concurrency.hard_limit) fail(`${at}.concurrency.soft_limit (${concurrency.soft_limit}) must not exceed hard_limit (${concurrency.hard_limit})`)
    }
    if (service.min_machines_running !== undefined && service.min_machines_running < 0) fail(`${at}.min_machines_running must not be negative`)
    service.checks?.forEach((check, j) => checkCheck(check, `${at}.checks[${j}]`))
  })
  for (const [name, check] of Object.entries(c.checks ?? {})) {
    checkCheck(check, `${path}.checks.${name}`)
    if (check.port === undefined) fail(`${path}.checks.${name}.port is required`)
  }

  if (c.restart) {
    if (c.restart.policy !== undefined && !['no', 'always', 'on-failure', 'spot-price'].includes(c.restart.policy)) fail(`${path}.restart.policy must be no, always or on-failure`)
    if (c.restart.max_retries !== undefined && (c.restart.max_retries < 0 || c.restart.max_retries > 1000)) fail(`${path}.restart.max_retries must be 0–1000`)
  }
  if (c.stop_config?.signal !== undefined) normaliseSignal(c.stop_config.signal, `${path}.stop_config.signal`)
  if (c.stop_config?.timeout !== undefined) parseDurationMs(c.stop_config.timeout, `${path}.stop_config.timeout`)

  for (const [field, value] of [['init.exec', c.init?.exec], ['init.entrypoint', c.init?.entrypoint], ['init.cmd', c.init?.cmd]] as const) {
    if (value && value.some((arg) => arg.includes('\0'))) fail(`${path}.${field}: arguments must not contain NUL bytes`)
  }
  c.files?.forEach((file, i) => {
    const at = `${path}.files[${i}]`
    if (typeof file.guest_path !== 'string' || !file.guest_path.startsWith('/') || file.guest_path.split('/').includes('..')) fail(`${at}.guest_path must be an absolute path without ".."`)
    const sources = [file.raw_value, file.secret_name, file.image_config].filter((s) => s !== undefined).length
    if (sources !== 1) fail(`${at}: give exactly one of raw_value, secret_name or image_config`)
    if (file.raw_value !== undefined) {
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(file.raw_value)) fail(`${at}.raw_value must be base64`)
      if (file.raw_value.length * 0.75 > MAX_FILE_BYTES) fail(`${at}.raw_value: files are limited to 1 MiB`)
    }
    if (file.image_config !== undefined) fail(`${at}.image_config is not supported by Hangar`)
    if (file.mode !== undefined && (file.mode < 0 || file.mode > 0o7777)) fail(`${at}.mode must be a file mode (0–0o7777)`)
  })
  if (c.mounts && c.mounts.length > 1) fail(`${path}.mounts: a Machine mounts at most one volume`)
  if (c.mounts?.length) fail(`${path}.mounts: volumes are not available on this Hangar yet`)
  if (c.containers?.length) fail(`${path}.containers: multi-container Machines are not supported by Hangar`)
  if (c.schedule !== undefined && !['hourly', 'daily', 'weekly', 'monthly'].includes(c.schedule)) fail(`${path}.schedule must be hourly, daily, weekly or monthly`)
}

function checkCheck(check: { type?: string; port?: number; interval?: unknown; timeout?: unknown; grace_period?: unknown; path?: string }, at: string): void {
  if (check.type !== undefined && check.type !== 'tcp' && check.type !== 'http') fail(`${at}.type must be "tcp" or "http"`)
  if (check.port !== undefined && !isPort(check.port)) fail(`${at}.port must be 1–65535`)
  for (const field of ['interval', 'timeout', 'grace_period'] as const) {
    if (check[field] !== undefined) parseDurationMs(check[field], `${at}.${field}`)
  }
  if (check.path !== undefined && !check.path.startsWith('/')) fail(`${at}.path must start with /`)
}

export function checkCreateRequest(request: CreateMachineRequest): void {
  checkMachineConfig(request.config)
  if (request.name !== undefined && !MACHINE_NAME_PATTERN.test(request.name)) fail(`name "${request.name.slice(0, 70)}" must be 1–63 letters, digits, '-' or '_', starting and ending with a letter or digit`)
  if (request.region !== undefined && !/^[a-z0-9,-]{2,64}$/.test(request.region)) fail(`region "${request.region.slice(0, 70)}" is not a region code`)
  if (request.lease_ttl !== undefined && (request.lease_ttl < 1 || request.lease_ttl > 86_400)) fail('lease_ttl must be 1–86400 seconds')
}
