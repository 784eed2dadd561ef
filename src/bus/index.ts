// Front door of src/bus: typed subjects and JSON RPC over a real NATS server.
export { Bus, SUBJECTS, type RpcHandlers } from './bus.js'
export { startNatsServer, type NatsServer } from './nats-server.js'
export { NatsRouteSource, NatsMachineController } from './route-feed.js'
