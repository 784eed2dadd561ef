// Front door of src/api (Fly's flaps): the Machines API over HTTP, its store and auth.
export { startApi, type ApiOptions, type RunningApi } from './server.js'
export { ApiStore, type AppRow, type OrgRow } from './api-store.js'
export { StaticTokenAuth, tokenFromHeader, type ApiAuth, type Caller } from './api-auth.js'
export { validateAgainstSpec, specSchemas } from './spec-validator.js'
export { checkMachineConfig, checkCreateRequest } from './machine-config-rules.js'
export { runApiProcess, type ApiProcessOptions } from './api-process.js'
