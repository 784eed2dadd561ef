import { spawn } from 'node:child_process'
import { closeSync, constants, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync, unlinkSync, watch, writeFileSync, writeSync, type FSWatcher } from 'node:fs'
import { readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { runCommand } from '../core/command.js'
import { InternalError, commandShell, isMountpoint, signalNumber, type CommandShell, type ExecResponse, type Logger, type ProcessStat, silentLogger } from '../core/index.js'
import { detectCgroups, prepareCgroups, readOomKills, type CgroupInfo } from './cgroups.js'
import type { GuestExit, GuestSpec, GuestStatus, RuntimeDriver } from './driver.js'
import { buildOciConfig } from './oci-spec.js'

// The `crun` driver (DESIGN "Guests", host-facts §6). Each guest runs under its own `conmon`,
// which daemonises, runs `crun create`, holds the guest's stdio (writing it to a bounded log) and
// records the exit code in `<exits>/<id>` when the guest ends. conmon is not a child of the agent,
// so killing or upgrading the agent never touches a running Machine; a restarted agent finds its
// guests again with `crun list` and their exits in the exit directory.
//
// Everything here but the guests' logs lives in a tmpfs the driver mounts at /run/hangar-<hash>
// (`runDir`): crun's state, each guest's bundle (config.json, conmon's pid, sync and attach
// files) and the exit files — like runc's and containerd's state, it describes processes that a
// reboot ends anyway. On disk it cost a dozen inode allocations per boot, and on ext4 without a
// journal (this kind of host) every allocation first checks candidate inodes for a recent
// delete, which made those allocations most of the CPU of a burst of creates.

export interface CrunDriverOptions {
  /** Names this driver's state: its run dir is /run/hangar-<hash of stateDir>. */
  stateDir: string
  /** The parent cgroup of every guest of this host, e.g. "hangar-1a2b3c4d". */
  cgroupParent: string
  logger?: Logger
  crunPath?: string
  conmonPath?: string
  /** Static tini, bind-mounted read-only into every guest as PID 1. */
  initPath?: string
}

/** Where a driver with this state dir keeps its volatile state; crun's root is `<it>/crun`.
 * A short name: conmon puts attach sockets here too, and unix socket paths stop at 108 bytes. */
export function crunDriverRunDir(stateDir: string): string {
  return `/run/hangar-${createHash('sha256').update(stateDir).digest('hex').slice(0, 10)}`
}

export class CrunDriver implements RuntimeDriver {
  readonly name = 'crun'
  private readonly runDir: string
  private readonly crunRoot: string
  private readonly exitDir: string
  private readonly bundlesDir: string
  private readonly crun: string
  private readonly conmon: string
  private readonly initPath: string
  private readonly logger: Logger
  private readonly exitListeners = new Set<(machineId: string) => void>()
  private watcher: FSWatcher | undefined

  private constructor(private readonly options: CrunDriverOptions, private readonly cgroups: CgroupInfo) {
    this.runDir = crunDriverRunDir(options.stateDir)
    this.crunRoot = join(this.runDir, 'crun')
    this.exitDir = join(this.runDir, 'exits')
    this.bundlesDir = join(this.runDir, 'bundles')
    this.crun = options.crunPath ?? '/usr/bin/crun'
    this.conmon = options.conmonPath ?? '/usr/bin/conmon'
    this.initPath = options.initPath ?? '/usr/bin/tini-static'
    this.logger = options.logger ?? silentLogger
  }

  static async create(options: CrunDriverOptions): Promise<CrunDriver> {
    for (const [path, what] of [[options.crunPath ?? '/usr/bin/crun', 'crun'], [options.conmonPath ?? '/usr/bin/conmon', 'conmon'], [options.initPath ?? '/usr/bin/tini-static', 'tini-static']] as const) {
      if (!existsSync(path)) throw new InternalError(`${what} is not installed at ${path} (Debian packages crun, conmon, tini; run scripts/setup)`)
    }
    const cgroups = await prepareCgroups(options.logger)
    const driver = new CrunDriver(options, cgroups)
    await mountRunDir(driver.runDir)
    for (const dir of [driver.crunRoot, driver.exitDir, driver.bundlesDir]) mkdirSync(dir, { recursive: true })
    driver.watcher = watch(driver.exitDir, (_event, filename) => {
      // conmon writes `<id>.XXXXXX` then renames it to `<id>`: only the final name counts.
      if (!filename || filename.includes('.')) return
      for (const listener of driver.exitListeners) listener(filename)
    })
    driver.watcher.on('error', (err) => driver.logger.error('exit watcher failed', { err }))
    return driver
  }

  get cgroupInfo(): CgroupInfo { return this.cgroups }

  cgroupsPathFor(machineId: string): string {
    return `/${this.options.cgroupParent}/${machineId}`
  }

  /** The guest's bundle: config.json, conmon's pid and sync files, the OOM marker. */
  bundleDir(machineId: string): string {
    return join(this.bundlesDir, machineId)
  }

  private crunArgs(...args: string[]): string[] {
    return ['--root', this.crunRoot, ...args]
  }

  async launch(spec: GuestSpec): Promise<{ pid: number }> {
    const id = spec.machineId
    // A stale exit file from an earlier run of this Machine would read as this run's exit.
    this.clearExit(id)
    // An earlier, interrupted launch may have left a container record behind.
    if (existsSync(join(this.crunRoot, id))) await runCommand(this.crun, this.crunArgs('delete', '-f', id), { allowFailure: true })
    const bundleDir = this.bundleDir(id)
    rmSync(bundleDir, { recursive: true, force: true })
    mkdirSync(bundleDir, { mode: 0o700 })
    const boundFiles = (spec.files ?? []).map((file, i) => {
      if (!file.path.startsWith('/')) throw new InternalError(`guest file path ${file.path} is not absolute`)
      const source = join(bundleDir, `file-${i}`)
      writeFileSync(source, file.content, { mode: 0o644 })
      return { destination: file.path, source }
    })
    const config = buildOciConfig(spec, { initPath: this.initPath, cgroupsPath: this.cgroupsPathFor(id), openFiles: GUEST_OPEN_FILES, boundFiles })
    // The guest's env (secrets included) is in there: readable by root only.
    writeFileSync(join(bundleDir, 'config.json'), JSON.stringify(config), { mode: 0o600 })
    const pid = await this.createUnderConmon(spec)
    try {
      this.start(id)
    } catch (err) {
      await this.remove(id)
      throw new InternalError(`crun could not start the guest: ${(err as Error).message}`)
    }
    return { pid }
  }

  /** `crun start`, without running crun: a created guest's init blocks reading `exec.fifo` in
   * its state dir until a writer opens it; `crun start` opens it, unlinks it (a guest without the
   * fifo is "running" to crun) and writes one byte (crun's status.c, libcrun_status_write_exec_fifo,
   * the same in every release since 0.x). Doing those three syscalls here saves a crun process
   * (about a millisecond of CPU) on every boot. Non-blocking: with no reader (the init already
   * died) the open fails with ENXIO instead of hanging the agent. */
  private start(machineId: string): void {
    const fifo = join(this.crunRoot, machineId, 'exec.fifo')
    let fd: number
    try {
      fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new Error(code === 'ENXIO' ? 'the guest exited before it was started' : code === 'ENOENT' ? 'the guest has no exec.fifo (not in the created state)' : (err as Error).message)
    }
    try {
      unlinkSync(fifo)
      writeSync(fd, Buffer.of(0))
    } finally {
      closeSync(fd)
    }
  }

  /** Starts conmon, which runs `crun create`, and waits on conmon's sync pipe for the guest's pid
   * (conmon API v1 writes `{"data": pid}` there, or `{"data": -1, "message": …}` on failure). */
  private createUnderConmon(spec: GuestSpec): Promise<number> {
    const shell = commandShell()
    return shell ? this.createUnderConmonViaShell(spec, shell) : this.createUnderConmonDirect(spec)
  }

  private conmonArgs(spec: GuestSpec): string[] {
    const id = spec.machineId
    const bundleDir = this.bundleDir(id)
    return [
      '--api-version', '1', '-c', id, '-u', id, '-n', id,
      '-r', this.crun, '--runtime-arg', '--root', '--runtime-arg', this.crunRoot,
      '-b', bundleDir, '-p', join(bundleDir, 'pid'), '-P', join(bundleDir, 'conmon.pid'),
      '-l', `k8s-file:${spec.logPath}`, '--log-size-max', String(spec.logMaxBytes),
      '--exit-dir', this.exitDir, '--socket-dir-path', this.runDir,
      // conmon drops an `oom` marker in its persist dir when the guest is OOM-killed; keep it with the bundle.
      '--persist-dir', bundleDir,
    ]
  }

  /** The same through the agent's command shell (no fork of the agent): conmon's sync "pipe" is
   * a file it writes `{"data": pid}` into once the guest is created; the agent waits for it. */
  private async createUnderConmonViaShell(spec: GuestSpec, shell: CommandShell): Promise<number> {
    const bundleDir = this.bundleDir(spec.machineId)
    const syncFile = join(bundleDir, 'conmon.sync')
    writeFileSync(syncFile, '')
    const started = await shell.run(this.conmon, this.conmonArgs(spec), { cwd: bundleDir, env: { _OCI_SYNCPIPE: '3' }, fd3: syncFile, timeoutMs: 30_000 })
    if (started.code !== 0) throw new InternalError(`conmon failed to start the guest: ${(started.stderr || `exit ${started.code}`).trim()}`)
    const deadline = Date.now() + 30_000
    for (let wait = 1; ; wait = Math.min(wait * 2, 20)) {
      const text = readFileSync(syncFile, 'utf8')
      const newline = text.indexOf('\n')
      if (newline >= 0 || text.endsWith('}')) {
        let message: { data?: number; message?: string }
        try { message = JSON.parse(newline >= 0 ? text.slice(0, newline) : text) } catch { message = {} }
        if (typeof message.data === 'number' && message.data > 0) return message.data
        if (message.data !== undefined) throw new InternalError(`the guest could not be created: ${(message.message ?? '').trim() || 'crun create failed'}`)
      }
      if (Date.now() > deadline) throw new InternalError('conmon did not report the guest within 30 s')
      if (await this.monitorGone(spec.machineId) && existsSync(join(bundleDir, 'conmon.pid')) && readFileSync(syncFile, 'utf8') === '') {
        throw new InternalError('conmon exited before reporting the guest')
      }
      await new Promise((r) => setTimeout(r, wait))
    }
  }

  private createUnderConmonDirect(spec: GuestSpec): Promise<number> {
    const args = this.conmonArgs(spec)
    return new Promise((resolve, reject) => {
      const child = spawn(this.conmon, args, {
        cwd: this.bundleDir(spec.machineId),
        stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
        env: { ...process.env, _OCI_SYNCPIPE: '3' },
        detached: true,
      })
      const syncPipe = child.stdio[3] as NodeJS.ReadableStream
      let buffered = ''
      let stderr = ''
      let settled = false
      const timer = setTimeout(() => finish(new InternalError(`conmon did not report the guest within 30 s`)), 30_000)
      const finish = (err: Error | undefined, pid?: number) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        ;(syncPipe as unknown as { destroy(): void }).destroy()
        child.stderr?.destroy()
        child.unref()
        if (err) reject(err)
        else resolve(pid!)
      }
      child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
      syncPipe.on('data', (chunk: Buffer) => {
        buffered += chunk.toString()
        const newline = buffered.indexOf('\n')
        const text = newline >= 0 ? buffered.slice(0, newline) : buffered
        let message: { data?: number; message?: string }
        try { message = JSON.parse(text) } catch { return }
        if (typeof message.data === 'number' && message.data > 0) finish(undefined, message.data)
        else finish(new InternalError(`the guest could not be created: ${(message.message ?? stderr).trim() || 'crun create failed'}`))
      })
      syncPipe.on('end', () => finish(new InternalError(`conmon exited before reporting the guest: ${stderr.trim() || 'no output'}`)))
      child.on('error', (err) => finish(new InternalError(`cannot run conmon: ${err.message}`)))
    })
  }

  async kill(machineId: string, signal: string): Promise<void> {
    const result = await runCommand(this.crun, this.crunArgs('kill', machineId, String(signalNumber(signal))), { allowFailure: true })
    if (result.code !== 0 && !/not running|does not exist|No such/i.test(result.stderr)) {
      throw new InternalError(`crun kill ${signal} failed: ${result.stderr.trim()}`)
    }
  }

  async pause(machineId: string): Promise<void> {
    await runCommand(this.crun, this.crunArgs('pause', machineId))
  }

  async resume(machineId: string): Promise<void> {
    await runCommand(this.crun, this.crunArgs('resume', machineId))
  }

  /** The guest's status, read from crun's state dir and /proc without spawning crun (this is on
   * every create's path). crun keeps `<root>/<id>/status` with the init's pid and start time, and
   * an `exec.fifo` while the container is created but not started; the freezer says paused.
   * Anything unexpected falls back to `crun state`. */
  async status(machineId: string): Promise<GuestStatus> {
    const stateDir = join(this.crunRoot, machineId)
    if (!existsSync(stateDir)) return 'absent'
    try {
      const state = JSON.parse(readFileSync(join(stateDir, 'status'), 'utf8')) as { pid: number; 'process-start-time': number; 'cgroup-path': string }
      let stat: string
      try { stat = readFileSync(`/proc/${state.pid}/stat`, 'utf8') } catch { return 'stopped' }
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(fields[19]) !== state['process-start-time'] || fields[0] === 'Z') return 'stopped'
      if (existsSync(join(stateDir, 'exec.fifo'))) return 'created'
      return this.isFrozen(state['cgroup-path']) ? 'paused' : 'running'
    } catch {
      return this.statusFromCrun(machineId)
    }
  }

  private isFrozen(cgroupPath: string): boolean {
    try {
      if (this.cgroups.layout === 'v2') return readFileSync(`${this.cgroups.unifiedRoot}${cgroupPath}/cgroup.freeze`, 'utf8').trim() === '1'
      return readFileSync(`${this.cgroups.v1Mounts.get('freezer')}${cgroupPath}/freezer.state`, 'utf8').trim() !== 'THAWED'
    } catch {
      return false
    }
  }

  private async statusFromCrun(machineId: string): Promise<GuestStatus> {
    const result = await runCommand(this.crun, this.crunArgs('state', machineId), { allowFailure: true })
    if (result.code !== 0) return 'absent'
    try {
      const state = JSON.parse(result.stdout) as { status: string }
      if (state.status === 'created' || state.status === 'running' || state.status === 'paused' || state.status === 'stopped') return state.status
      return 'stopped'
    } catch {
      return 'absent'
    }
  }

  async exitStatus(machineId: string): Promise<GuestExit | undefined> {
    const file = join(this.exitDir, machineId)
    let text: string
    try { text = readFileSync(file, 'utf8').trim() } catch { return undefined }
    const exitCode = Number(text)
    if (!Number.isFinite(exitCode)) return undefined
    const oomKills = readOomKills(this.cgroups, this.cgroupsPathFor(machineId))
    return {
      exitCode,
      signal: exitCode > 128 ? exitCode - 128 : 0,
      oomKilled: oomKills > 0,
      exitedAt: statSync(file).mtime,
    }
  }

  /** The guest has gone but its monitor left no exit file (it was killed too): report that. */
  async monitorGone(machineId: string): Promise<boolean> {
    try {
      const pid = Number(readFileSync(join(this.bundleDir(machineId), 'conmon.pid'), 'utf8').trim())
      process.kill(pid, 0)
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      return !cmdline.startsWith(this.conmon) && !cmdline.startsWith('conmon')
    } catch {
      return true
    }
  }

  async remove(machineId: string): Promise<void> {
    if (existsSync(join(this.crunRoot, machineId))) await runCommand(this.crun, this.crunArgs('delete', '-f', machineId), { allowFailure: true, timeoutMs: 30_000 })
    rmSync(this.bundleDir(machineId), { recursive: true, force: true })
  }

  clearExit(machineId: string): void {
    try { unlinkSync(join(this.exitDir, machineId)) } catch { /* none */ }
  }

  async exec(machineId: string, command: string[], options: { stdin?: string; timeoutMs: number; env?: Record<string, string> }): Promise<ExecResponse> {
    const envArgs = Object.entries(options.env ?? {}).flatMap(([k, v]) => ['--env', `${k}=${v}`])
    const result = await runCommand(this.crun, this.crunArgs('exec', ...envArgs, machineId, ...command), {
      input: options.stdin ?? '', timeoutMs: options.timeoutMs, allowFailure: true, maxOutputBytes: 1024 * 1024,
    })
    const killedBy = result.signal ? signalNumber(result.signal) : 0
    return { exit_code: killedBy ? 128 + killedBy : result.code, exit_signal: killedBy, stdout: result.stdout, stderr: result.stderr }
  }

  async processes(machineId: string): Promise<ProcessStat[]> {
    const result = await runCommand(this.crun, this.crunArgs('ps', '--format', 'json', machineId), { allowFailure: true })
    if (result.code !== 0) return []
    let pids: number[]
    try { pids = JSON.parse(result.stdout) as number[] } catch { return [] }
    const clockTicks = 100
    const stats: ProcessStat[] = []
    for (const pid of pids) {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
        const utime = Number(fields[11]); const stime = Number(fields[12]); const startTicks = Number(fields[19])
        const rssPages = Number(fields[21])
        const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ')
        let directory = ''
        try { directory = await readlink(`/proc/${pid}/cwd`) } catch { /* exited */ }
        stats.push({
          pid, command, directory,
          cpu: Math.round(((utime + stime) / clockTicks) * 1000),
          rss: rssPages * 4096,
          stime: Math.round((stime / clockTicks) * 1000),
          rtime: Math.round((startTicks / clockTicks) * 1000),
          listen_sockets: [],
        })
      } catch { /* the process exited meanwhile */ }
    }
    if (stats[0]) stats[0].listen_sockets = listeningSockets(stats[0].pid)
    return stats
  }

  async list(): Promise<string[]> {
    if (!existsSync(this.crunRoot)) return []
    return readdirSync(this.crunRoot).filter((name) => existsSync(join(this.crunRoot, name, 'status')) || existsSync(join(this.crunRoot, name)))
  }

  onExit(listener: (machineId: string) => void): () => void {
    this.exitListeners.add(listener)
    return () => this.exitListeners.delete(listener)
  }

  /** Stops watching exits. Running guests are untouched (they outlive the agent); when none is
   * left, the driver's empty cgroup parents and socket dir are removed too. */
  async close(): Promise<void> {
    this.watcher?.close()
    this.watcher = undefined
    this.exitListeners.clear()
    if ((await this.list()).length > 0) return
    for (const mount of allCgroupMounts()) {
      try { rmdirSync(join(mount, this.options.cgroupParent)) } catch { /* absent or still in use */ }
    }
    if (isMountpoint(this.runDir)) await runCommand('busybox', ['umount', this.runDir], { allowFailure: true })
    rmSync(this.runDir, { recursive: true, force: true })
  }
}

/** The run dir is a tmpfs of its own (64 MiB is room for thousands of guests' few KiB each):
 * /run is not a tmpfs on every host, and a disk is the wrong place for this churn. Idempotent;
 * a mount left by an earlier agent is reused with everything in it. */
async function mountRunDir(runDir: string): Promise<void> {
  if (isMountpoint(runDir)) return
  mkdirSync(runDir, { recursive: true, mode: 0o700 })
  await runCommand('busybox', ['mount', '-t', 'tmpfs', '-o', 'mode=0700,size=64m', 'hangar-run', runDir])
}

/** Every cgroup hierarchy's mount point: crun makes the guest's cgroup in each, named ones too. */
function allCgroupMounts(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .filter((line) => / - cgroup2? /.test(line))
    .map((line) => line.split(' ')[4]!)
}

/** TCP sockets in LISTEN state in the guest's network namespace, read through its init's /proc. */
function listeningSockets(pid: number): Array<{ address: string; proto: string }> {
  const sockets: Array<{ address: string; proto: string }> = []
  for (const [file, proto] of [['tcp', 'tcp'], ['tcp6', 'tcp6']] as const) {
    let text: string
    try { text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8') } catch { continue }
    for (const line of text.split('\n').slice(1)) {
      const parts = line.trim().split(/\s+/)
      if (parts[3] !== '0A') continue // 0A = LISTEN
      const [hexAddr, hexPort] = parts[1]!.split(':')
      const port = parseInt(hexPort!, 16)
      const address = proto === 'tcp'
        ? hexAddr!.match(/../g)!.reverse().map((h) => parseInt(h, 16)).join('.')
        : (hexAddr === '00000000000000000000000000000000' ? '::' : hexAddr!)
      sockets.push({ address: `${address}:${port}`, proto })
    }
  }
  return sockets
}

export { detectCgroups }

// Guests get the open-file limit the agent itself may grant: raising a hard limit above the
// caller's needs CAP_SYS_RESOURCE, which a host inside a container may not have.
const GUEST_OPEN_FILES = (() => {
  try {
    const match = /^Max open files\s+(\d+)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))
    const hard = match?.[2] === 'unlimited' ? 1048576 : Number(match?.[2] ?? 1024)
    return Math.min(hard, 1048576)
  } catch {
    return 1024
  }
})()
