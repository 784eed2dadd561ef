// Front door of src/core: ids, the error registry, wire types, durations, signals, logging.
export * from './errors.js'
export * from './ids.js'
export * from './wire.js'
export * from './duration.js'
export * from './signals.js'
export * from './logger.js'
export * from './routing.js'
export { CommandShell, enableCommandShell, commandShell } from './command-shell.js'
