import type { ExecResponse, ProcessStat } from '../core/index.js'

// The runtime-driver interface (DESIGN "Guests"): what the agent needs from any guest runtime.
// `crun` (containers, the default) is the first driver; `microvm` (QEMU) and `gvisor` plug in
// behind the same interface. A driver knows nothing of Machine states or the database: it launches,
// signals, freezes and removes guests, and reports how they exited.

export interface GuestSpec {
  machineId: string
  /** The mounted copy-on-write root filesystem. */
  rootfs: string
  /** The main process argv, before the init (tini) the driver puts in front of it. */
  args: string[]
  env: Record<string, string>
  cwd: string
  user: { uid: number; gid: number }
  hostname: string
  /** Network namespace to join (the Machine's veth is already inside it). */
  netnsPath: string
  memoryMb: number
  cpus: number
  cpuKind: 'shared' | 'performance'
  /** Small files the guest sees at these absolute paths (/etc/hosts, /etc/resolv.conf…), bind-
   * mounted from the driver's state rather than written into the rootfs: nothing to copy up. */
  files?: Array<{ path: string; content: string }>
  /** Where the guest's stdout/stderr go; bounded by `logMaxBytes`. */
  logPath: string
  logMaxBytes: number
}

export interface GuestExit {
  /** The exit code of the main process (128+N when it was killed by signal N). */
  exitCode: number
  /** The signal that killed the main process, 0 if it exited. */
  signal: number
  oomKilled: boolean
  /** When the monitor recorded the exit. */
  exitedAt: Date
}

export type GuestStatus = 'created' | 'running' | 'paused' | 'stopped' | 'absent'

export interface RuntimeDriver {
  readonly name: string
  /** Launches the guest (created, then started) under a monitor that outlives the agent. */
  launch(spec: GuestSpec): Promise<{ pid: number }>
  kill(machineId: string, signal: string): Promise<void>
  /** Freeze every process of the guest (suspend) / thaw it (resume). */
  pause(machineId: string): Promise<void>
  resume(machineId: string): Promise<void>
  status(machineId: string): Promise<GuestStatus>
  /** How the guest exited, once its monitor recorded it; undefined while it runs. */
  exitStatus(machineId: string): Promise<GuestExit | undefined>
  /** Forget the guest: delete its runtime state and cgroup. Idempotent; kills it if still alive. */
  remove(machineId: string): Promise<void>
  exec(machineId: string, command: string[], options: { stdin?: string; timeoutMs: number; env?: Record<string, string> }): Promise<ExecResponse>
  processes(machineId: string): Promise<ProcessStat[]>
  /** Guests this driver knows on the host (for adoption after an agent restart). */
  list(): Promise<string[]>
  /** Calls `listener` with the Machine id whenever a guest's monitor records an exit. */
  onExit(listener: (machineId: string) => void): () => void
  close(): Promise<void>
}
