// Front door of src/deploy (flyctl's deploy, client side): fly.toml → releases and Machines over
// the Machines API, with rolling, immediate, canary and bluegreen strategies; scale; status;
// rolling Machines after a secrets change; launch.
export { deploy, DEFAULT_DRAIN_MS, DEFAULT_POLL_INTERVAL_MS, DEFAULT_SMOKE_MS, type DeployOptions, type DeployResult, type GroupResult } from './deployer.js'
export { DeployAbortedError, isDeployAborted } from './errors.js'
export { scaleCount, scaleVm, type ScaleCountOptions, type ScaleCountResult, type ScaleVmOptions, type ScaleVmResult, type ScaleTiming } from './scale.js'
export { rollMachines, type RollResult } from './roll.js'
export { appStatus, machineStatus, type AppStatus, type MachineStatus } from './status.js'
export { launch, type LaunchOptions, type LaunchResult } from './launch.js'
export { machinesByGroup, isDeployManaged, groupOf, configForMachine, batches, healthOf, expectedCheckCount, machinesToRemove, type HealthVerdict } from './plan.js'
export { MachineOps, type MachineOpsOptions } from './machine-ops.js'
export { noProgress, type DeployApi, type Progress, type ProgressEvent, type ReleaseRecord, type ReleaseStatus } from './ports.js'
