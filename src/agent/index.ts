// Front door of src/agent (Fly's flyd): durable Machine state machines on one host.
export { Agent, type AgentOptions } from './agent.js'
export { AgentStore, type MachineRow, type ImageRuntimeConfig, type OperationKind } from './store.js'
export { TRANSITIONS, ACTION_ACCEPTS, assertActionAllowed, canTransition, isSettled, type MachineAction } from './transition-table.js'
export { serveAgent, type HostInfo } from './agent-service.js'
export { startAgent, runAgentProcess, hostIdFor, imagePort, type AgentProcessOptions, type RunningAgent } from './agent-process.js'
export type { ImagePort, AgentImage, AgentEvents } from './ports.js'
export { parseK8sFileLine } from './log-tailer.js'
