// Front door of src/network: 6PN addressing, the host bridge, per-Machine namespaces, the WireGuard mesh.
export * from './addressing.js'
export * from './machine-network.js'
export * from './wireguard-keys.js'
export * from './wireguard-plan.js'
export { WireguardMesh, type WireguardMeshOptions } from './wireguard-mesh.js'
export { createNetnsStar, removeNetnsStar, killNetnsProcesses, netnsExec, type NetnsStar, type NetnsStarOptions, type StarNode } from './netns-star.js'
