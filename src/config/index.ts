// Front door of src/config: Fly's fly.toml accepted as it is (reference §2) → an AppConfig with
// warnings, → one MachineConfig per process group plus the deploy settings.
export { parseFlyToml, processGroups, defaultProcessGroup, appliesToGroup, DEFAULT_PROCESS_GROUP, DEPLOY_STRATEGIES, PORT_HANDLERS, DEFAULT_WAIT_TIMEOUT_MS, DEFAULT_RELEASE_COMMAND_TIMEOUT_MS, DEFAULT_MAX_UNAVAILABLE, DEFAULT_SOFT_LIMIT } from './app-config.js'
export type { AppConfig, ParsedFlyToml, BuildConfig, DeployConfig, DeployStrategy, ServiceConfig, TopLevelCheckConfig, VmConfig, MountConfig, RestartConfig, FileConfig, MetricsConfig, ExperimentalConfig } from './app-config.js'
export { FlyTomlError, formatProblem } from './config-reader.js'
export type { ConfigProblem, ConfigWarning } from './config-reader.js'
export * from './machine-configs.js'
export * from './default-fly-toml.js'
export { shellSplit } from './shell-split.js'
export { VM_SIZES, DEFAULT_VM_SIZE, DEFAULT_GUEST, MEMORY_MB_PER_CPU, guestForSize, guestProblem } from './vm-sizes.js'
export type { VmSize } from './vm-sizes.js'
