// Front door of src/host: the per-host supervisor behind `hangar host`.
export { Supervisor, nextBackoff, type ComponentSpec, type SupervisorOptions } from './supervisor.js'
export { runHost, defaultUnderlayAddress, type HostOptions } from './host.js'
export { startHostMesh, type HostMesh, type HostMeshInfo } from './host-mesh.js'
export { cleanupHost } from './cleanup.js'
