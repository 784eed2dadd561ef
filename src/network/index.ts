// Front door of src/network: 6PN addressing, the host bridge, per-Machine namespaces.
export * from './addressing.js'
export * from './machine-network.js'
