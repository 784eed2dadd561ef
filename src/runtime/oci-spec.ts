import type { GuestSpec } from './driver.js'

// Builds the OCI runtime config for a Machine (host-facts §6: a Machine as crun + conmon + tini).
// Pure: the same spec always gives the same config, so it is tested without crun.

/** Where the host's static tini is bind-mounted inside every guest; it runs as PID 1. Inside the
 * guest's /dev (a tmpfs of its own), so the mountpoint never has to be made in the rootfs. */
export const GUEST_INIT_PATH = '/dev/.hangar/tini'

// Docker's default capability set: a Machine's root can bind low ports, chown, setuid, etc.
const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
]

export const CPU_PERIOD_US = 100_000

export interface CgroupLimits {
  memoryBytes: number
  cpuQuotaUs: number
  cpuPeriodUs: number
  cpuShares: number
  pids: number
}

/** guest sizes → cgroup limits. `cpus` caps CPU time at that many cores (quota/period); the kind
 * sets the weight when cores are contended: a performance CPU weighs 16× a shared one, as Fly's
 * shared CPUs get a 1/16 baseline (reference §1.5 presets). */
export function cgroupLimitsFor(guest: { memoryMb: number; cpus: number; cpuKind: 'shared' | 'performance' }): CgroupLimits {
  return {
    memoryBytes: guest.memoryMb * 1024 * 1024,
    cpuQuotaUs: Math.round(guest.cpus * CPU_PERIOD_US),
    cpuPeriodUs: CPU_PERIOD_US,
    cpuShares: guest.cpuKind === 'performance' ? 1024 * guest.cpus : 64 * guest.cpus,
    pids: 16384,
  }
}

export function buildOciConfig(spec: GuestSpec, options: { initPath: string; cgroupsPath: string; openFiles: number; boundFiles?: Array<{ destination: string; source: string }> }): Record<string, unknown> {
  const limits = cgroupLimitsFor(spec)
  const env = Object.entries(spec.env).map(([k, v]) => `${k}=${v}`)
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: spec.user.uid, gid: spec.user.gid },
      // tini as PID 1 reaps zombies and forwards signals to the main process's group (-g), so a
      // stop signal reaches a shell's children too.
      args: [GUEST_INIT_PATH, '-g', '--', ...spec.args],
      env,
      cwd: spec.cwd,
      capabilities: {
        bounding: DEFAULT_CAPABILITIES,
        effective: DEFAULT_CAPABILITIES,
        permitted: DEFAULT_CAPABILITIES,
        inheritable: [],
        ambient: [],
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: options.openFiles, soft: options.openFiles }],
      noNewPrivileges: false,
    },
    root: { path: spec.rootfs, readonly: false },
    hostname: spec.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
      { destination: GUEST_INIT_PATH, type: 'bind', source: options.initPath, options: ['bind', 'ro', 'nosuid', 'nodev'] },
      ...(options.boundFiles ?? []).map((file) => ({ destination: file.destination, type: 'bind', source: file.source, options: ['bind', 'nosuid', 'nodev'] })),
    ],
    linux: {
      cgroupsPath: options.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: 'rwm' }, ...ALLOWED_DEVICES],
        memory: { limit: limits.memoryBytes, swap: limits.memoryBytes },
        cpu: { quota: limits.cpuQuotaUs, period: limits.cpuPeriodUs, shares: limits.cpuShares },
        pids: { limit: limits.pids },
      },
      namespaces: [
        { type: 'pid' },
        { type: 'network', path: spec.netnsPath },
        { type: 'ipc' },
        { type: 'uts' },
        { type: 'mount' },
      ],
      maskedPaths: ['/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi'],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  }
}

// /dev/null, zero, full, random, urandom, tty, and the pty master: what a program expects to open.
const ALLOWED_DEVICES = [
  { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' },
  { allow: true, type: 'c', major: 1, minor: 5, access: 'rwm' },
  { allow: true, type: 'c', major: 1, minor: 7, access: 'rwm' },
  { allow: true, type: 'c', major: 1, minor: 8, access: 'rwm' },
  { allow: true, type: 'c', major: 1, minor: 9, access: 'rwm' },
  { allow: true, type: 'c', major: 5, minor: 0, access: 'rwm' },
  { allow: true, type: 'c', major: 5, minor: 2, access: 'rwm' },
  { allow: true, type: 'c', major: 136, access: 'rwm' },
]

