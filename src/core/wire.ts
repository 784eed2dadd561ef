// The JSON shapes the API, the agent, the CLI and the catalog exchange. Field names are Fly's
// (spec/fly-machines-openapi.json, reference §1.3–§1.5) so that flyctl-shaped clients work as-is.

/** reference §1.6. Persistent, transient and terminal states of a Machine. */
export const PERSISTENT_STATES = ['created', 'started', 'stopped', 'suspended', 'failed'] as const
export const TRANSIENT_STATES = ['creating', 'starting', 'stopping', 'restarting', 'suspending', 'destroying', 'launch_failed', 'updating', 'replacing'] as const
export const TERMINAL_STATES = ['destroyed', 'replaced', 'migrated'] as const
export type PersistentState = (typeof PERSISTENT_STATES)[number]
export type TransientState = (typeof TRANSIENT_STATES)[number]
export type TerminalState = (typeof TERMINAL_STATES)[number]
export type MachineState = PersistentState | TransientState | TerminalState
export const ALL_STATES: readonly MachineState[] = [...PERSISTENT_STATES, ...TRANSIENT_STATES, ...TERMINAL_STATES]

/** States a caller can wait for (`GET …/wait?state=`); `settled` means any persistent or terminal state. */
export const WAITABLE_STATES = ['started', 'stopped', 'suspended', 'destroyed', 'failed', 'created', 'settled'] as const
export type WaitableState = (typeof WAITABLE_STATES)[number]

export interface MachineGuest {
  cpu_kind?: 'shared' | 'performance'
  cpus?: number
  memory_mb?: number
  max_memory_mb?: number
  gpus?: number
  gpu_kind?: string
  host_dedication_id?: string
  kernel_args?: string[]
  persist_rootfs?: 'never' | 'always' | 'restart'
}

export interface MachineInit {
  exec?: string[]
  entrypoint?: string[]
  cmd?: string[]
  tty?: boolean
  swap_size_mb?: number
  kernel_args?: string[]
}

export interface MachineHTTPHeader { name: string; values: string[] }

export interface MachineServiceCheck {
  type?: 'tcp' | 'http'
  port?: number
  interval?: string
  timeout?: string
  grace_period?: string
  method?: string
  path?: string
  protocol?: 'http' | 'https'
  tls_server_name?: string
  tls_skip_verify?: boolean
  headers?: MachineHTTPHeader[]
}

export interface MachineCheck extends MachineServiceCheck {
  kind?: 'informational' | 'readiness'
}

export interface HTTPOptions {
  compress?: boolean
  h2_backend?: boolean
  idle_timeout?: number
  headers_read_timeout?: number
  response?: { headers?: Record<string, unknown>; pristine?: boolean }
  replay_cache?: Array<{ path_prefix: string; ttl_seconds: number; type: 'cookie' | 'header'; name: string; allow_bypass?: boolean }>
}

export interface TLSOptions { alpn?: string[]; versions?: string[]; default_self_signed?: boolean }

export interface MachinePort {
  port?: number
  start_port?: number
  end_port?: number
  handlers?: string[]
  force_https?: boolean
  tls_options?: TLSOptions
  http_options?: HTTPOptions
  proxy_proto_options?: { version?: 'v1' | 'v2' }
}

export interface MachineServiceConcurrency {
  type?: 'connections' | 'requests'
  soft_limit?: number
  hard_limit?: number
}

/** On the wire autostop is `false|true|"off"|"stop"|"suspend"`; responses send booleans for
 * off/stop and the string for suspend (reference §1.5). Internally it is always the word. */
export type Autostop = 'off' | 'stop' | 'suspend'

export interface MachineService {
  protocol?: 'tcp' | 'udp'
  internal_port?: number
  ports?: MachinePort[]
  concurrency?: MachineServiceConcurrency
  autostop?: Autostop | boolean
  autostart?: boolean
  min_machines_running?: number
  checks?: MachineServiceCheck[]
  force_instance_key?: string
  force_instance_description?: string
}

export interface MachineMount {
  volume?: string
  path?: string
  name?: string
  encrypted?: boolean
  size_gb?: number
  extend_threshold_percent?: number
  add_size_gb?: number
  size_gb_limit?: number
}

export type RestartPolicy = 'no' | 'always' | 'on-failure' | 'spot-price'
export interface MachineRestart { policy?: RestartPolicy; max_retries?: number; gpu_bid_price?: number }

export interface MachineProcess {
  exec?: string[]
  entrypoint?: string[]
  cmd?: string[]
  user?: string
  env?: Record<string, string>
  env_from?: Array<{ env_var: string; field_ref: 'id' | 'version' | 'app_name' | 'private_ip' | 'region' | 'image' }>
  secrets?: Array<{ env_var: string; name: string }>
  ignore_app_secrets?: boolean
}

export interface MachineFile {
  guest_path: string
  raw_value?: string
  secret_name?: string
  image_config?: string
  mode?: number
}

export interface StopConfig { signal?: string; timeout?: string | number }

export interface DNSConfig {
  skip_registration?: boolean
  nameservers?: string[]
  searches?: string[]
  options?: Array<{ name: string; value?: string }>
  hostname?: string
  hostname_fqdn?: string
}

export interface MachineConfig {
  image: string
  guest?: MachineGuest
  env?: Record<string, string>
  metadata?: Record<string, string>
  init?: MachineInit
  services?: MachineService[]
  checks?: Record<string, MachineCheck>
  mounts?: MachineMount[]
  restart?: MachineRestart
  auto_destroy?: boolean
  processes?: MachineProcess[]
  schedule?: string
  stop_config?: StopConfig
  dns?: DNSConfig
  files?: MachineFile[]
  statics?: unknown[]
  metrics?: { port?: number; path?: string; https?: boolean }
  standbys?: string[]
  containers?: unknown[]
  rootfs?: { persist?: 'never' | 'restart' | 'always'; size_gb?: number }
  cache_drive?: { size_mb?: number }
  spot?: unknown
  size?: string
  disable_machine_autostart?: boolean
}

export interface CreateMachineRequest {
  config: MachineConfig
  name?: string
  region?: string
  skip_launch?: boolean
  skip_service_registration?: boolean
  skip_secrets?: boolean
  min_secrets_version?: number
  lease_ttl?: number
  lsvd?: boolean
}

export interface UpdateMachineRequest extends CreateMachineRequest {
  current_version?: string
}

export interface ImageRef {
  registry: string
  repository: string
  tag: string
  digest: string
  labels: Record<string, string>
}

export interface ExitEvent {
  exit_code: number
  guest_exit_code: number
  guest_signal: number
  oom_killed: boolean
  requested_stop: boolean
  restarting: boolean
  signal: number
  exited_at: string
}

export interface MachineEvent {
  id: string
  type: string
  status: string
  source: 'user' | 'flyd'
  timestamp: number
  request?: { exit_event?: ExitEvent; restart_count?: number; [key: string]: unknown }
}

export interface CheckStatus { name: string; status: 'passing' | 'warning' | 'critical'; output: string; updated_at: string }

export interface StrippedLease { owner: string; description: string; expires_at: number; nonce?: string; version?: string }

export interface Machine {
  id: string
  name: string
  state: MachineState
  region: string
  instance_id: string
  version?: string
  private_ip: string
  config: MachineConfig
  incomplete_config?: MachineConfig
  image_ref: ImageRef
  created_at: string
  updated_at: string
  events: MachineEvent[]
  checks?: CheckStatus[]
  nonce?: string
  lease?: StrippedLease
  host_status: 'ok' | 'unknown' | 'unreachable'
  cordoned?: boolean
  /** Hangar's addition: which host holds the Machine. */
  host_id?: string
}

export interface LeaseResponse {
  status: 'success'
  data: { nonce: string; expires_at: number; owner: string; description: string; version: string }
}

export interface WaitResponse { ok: boolean; state: MachineState; version: string; event_id: string }

export interface ExecRequest { command?: string[]; cmd?: string; container?: string; machine?: boolean; stdin?: string; timeout?: number }
export interface ExecResponse { exit_code: number; exit_signal: number; stdout: string; stderr: string }

export interface ProcessStat {
  pid: number
  stime: number
  rtime: number
  command: string
  directory: string
  cpu: number
  rss: number
  listen_sockets: Array<{ address: string; proto: string }>
}

export interface MachineVersion { version: string; user_config: MachineConfig }

export interface App {
  id: string
  name: string
  machine_count: number
  volume_count: number
  network: string
  organization: { name: string; slug: string }
  status: string
  internal_numeric_id?: number
}

export interface CreateAppRequest { app_name?: string; name?: string; org_slug?: string; network?: string; enable_subdomains?: boolean }

/** A log line from a Machine, as published on NATS and streamed by `hangar logs`. */
export interface LogLine {
  timestamp: string
  app: string
  machine_id: string
  region: string
  stream: 'stdout' | 'stderr'
  message: string
}

/** Header names used between clients, the API and the proxy (reference §1.1, §3). */
export const HEADERS = {
  requestId: 'fly-request-id',
  leaseNonce: 'fly-machine-lease-nonce',
  forceInstanceId: 'fly-force-instance-id',
} as const
