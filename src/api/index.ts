// Front door of src/api (Fly's flaps): the Machines API over HTTP, its store and auth.
export { startApi, ROUTE_MODULES, type ApiOptions, type RunningApi, type ApiContext, type RouteModule } from './server.js'
export { Router, type RequestContext, type Reply, type StreamReply } from './http.js'
export { ApiStore, type AppRow, type OrgRow } from './api-store.js'
export { StaticTokenAuth, tokenFromHeader, type ApiAuth, type Caller } from './api-auth.js'
export { validateAgainstSpec, specSchemas } from './spec-validator.js'
export { checkMachineConfig, checkCreateRequest } from './machine-config-rules.js'
export { runApiProcess, type ApiProcessOptions } from './api-process.js'
