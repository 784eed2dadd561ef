// Front door of src/runtime: the guest driver interface and its crun driver.
export type { GuestSpec, GuestExit, GuestStatus, RuntimeDriver } from './driver.js'
export { CrunDriver, crunDriverRunDir, type CrunDriverOptions } from './crun-driver.js'
export { buildOciConfig, cgroupLimitsFor, GUEST_INIT_PATH } from './oci-spec.js'
export { detectCgroups, prepareCgroups, readCpuUsageUs, readMemoryLimitBytes, readOomKills, type CgroupInfo, type CgroupLayout } from './cgroups.js'
