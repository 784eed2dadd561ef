// Front door of src/host: the per-host supervisor behind `hangar host`.
export { Supervisor, nextBackoff, type ComponentSpec, type SupervisorOptions } from './supervisor.js'
export { runHost, type HostOptions } from './host.js'
export { cleanupHost } from './cleanup.js'
