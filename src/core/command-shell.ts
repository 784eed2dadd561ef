import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { CommandResult } from './command.js'

// Runs the host's tools (ip, mount, crun) through one long-lived `bash` instead of forking the
// agent for each. Node forks the whole calling process to spawn a child; in the agent (100+ MB)
// that fork took ~1.6 ms of main-thread CPU per tool, half of all the agent's CPU per Machine
// create (measured with --cpu-prof: ChildProcess.spawn at 796 of 1635 busy ms). bash forks
// itself (a few MB) in the background instead, and the agent only writes a line.
//
// Protocol: for request N the agent writes `{ (echo "P N $BASHPID"; exec cmd … <in >out 2>err);
// echo "D N $?"; } &` — the subshell reports its pid (for timeouts), execs the tool in place, and
// the group reports its exit status; output is read from files in a private tmpfs directory.

interface Pending {
  resolve: (result: CommandResult) => void
  reject: (err: Error) => void
  pid?: number
  timer?: NodeJS.Timeout
  maxOutputBytes: number
}

const quote = (value: string) => `'${value.replace(/'/g, `'\\''`)}'`

export class CommandShell {
  private shell: ChildProcess | undefined
  private readonly pending = new Map<number, Pending>()
  private nextId = 1
  private readonly dir: string

  constructor(dir = `/dev/shm/hangar-commands-${process.pid}`) {
    this.dir = dir
  }

  private ensure(): ChildProcess {
    if (this.shell && this.shell.exitCode === null && !this.shell.killed) return this.shell
    mkdirSync(this.dir, { recursive: true, mode: 0o700 })
    const shell = spawn('bash', ['--norc', '--noprofile'], { stdio: ['pipe', 'pipe', 'inherit'] })
    const lines = createInterface({ input: shell.stdout! })
    lines.on('line', (line) => this.onLine(line))
    shell.once('exit', () => {
      if (this.shell === shell) this.shell = undefined
      for (const [id, pending] of this.pending) {
        if (pending.timer) clearTimeout(pending.timer)
        pending.reject(new Error('the command shell exited'))
        this.pending.delete(id)
      }
    })
    shell.stdin!.on('error', () => undefined)
    this.shell = shell
    this.hold(false)
    return shell
  }

  /** An idle shell must not keep Node running; one with commands in flight must. */
  private hold(busy: boolean): void {
    const shell = this.shell
    if (!shell) return
    const handles = [shell, shell.stdin, shell.stdout] as unknown as Array<{ ref?: () => void; unref?: () => void } | null>
    for (const handle of handles) busy ? handle?.ref?.() : handle?.unref?.()
  }

  private onLine(line: string): void {
    const [kind, idText, value] = line.split(' ')
    const id = Number(idText)
    const pending = this.pending.get(id)
    if (!pending) return
    if (kind === 'P') { pending.pid = Number(value); return }
    if (kind !== 'D') return
    this.pending.delete(id)
    if (pending.timer) clearTimeout(pending.timer)
    if (this.pending.size === 0) this.hold(false)
    const read = (suffix: string) => {
      try {
        const buffer = readFileSync(join(this.dir, `${id}.${suffix}`))
        return buffer.subarray(0, pending.maxOutputBytes).toString()
      } catch { return '' }
    }
    const code = Number(value)
    const result: CommandResult = { code, signal: null, stdout: read('out'), stderr: read('err') }
    for (const suffix of ['in', 'out', 'err']) rmSync(join(this.dir, `${id}.${suffix}`), { force: true })
    pending.resolve(result)
  }

  /** `env` adds variables for this command only; `fd3` opens that file as the command's fd 3. */
  run(command: string, args: readonly string[], options: { input?: string | Buffer; cwd?: string; timeoutMs?: number; maxOutputBytes?: number; env?: Record<string, string>; fd3?: string } = {}): Promise<CommandResult> {
    const shell = this.ensure()
    const id = this.nextId++
    const base = join(this.dir, String(id))
    let stdin = '/dev/null'
    if (options.input !== undefined) {
      writeFileSync(`${base}.in`, options.input)
      stdin = `${base}.in`
    }
    const cd = options.cwd ? `cd ${quote(options.cwd)} && ` : ''
    const env = Object.entries(options.env ?? {}).map(([k, v]) => { if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad env name ${k}`); return `export ${k}=${quote(v)}; ` }).join('')
    const fd3 = options.fd3 ? ` 3>${quote(options.fd3)}` : ''
    const line = `{ (echo "P ${id} $BASHPID"; ${cd}${env}exec ${[command, ...args].map(quote).join(' ')} <${quote(stdin)} >${quote(`${base}.out`)} 2>${quote(`${base}.err`)}${fd3}); echo "D ${id} $?"; } &\n`
    return new Promise((resolve, reject) => {
      const pending: Pending = { resolve, reject, maxOutputBytes: options.maxOutputBytes ?? 4 * 1024 * 1024 }
      if (options.timeoutMs) {
        pending.timer = setTimeout(() => { if (pending.pid) { try { process.kill(pending.pid, 'SIGKILL') } catch { /* gone */ } } }, options.timeoutMs)
      }
      this.pending.set(id, pending)
      if (this.pending.size === 1) this.hold(true)
      shell.stdin!.write(line)
    })
  }

  close(): void {
    this.shell?.kill('SIGKILL')
    this.shell = undefined
    rmSync(this.dir, { recursive: true, force: true })
  }
}

let shared: CommandShell | undefined

/** Routes `runCommand` calls (those without their own env) through one bash (the agent turns this on). */
export function enableCommandShell(): CommandShell {
  // Directories of shells whose process was killed (kill -9 leaves them): remove them.
  try {
    for (const name of readdirSync('/dev/shm')) {
      const pid = Number(/^hangar-commands-(\d+)$/.exec(name)?.[1])
      if (!pid || pid === process.pid) continue
      try { process.kill(pid, 0) } catch { rmSync(join('/dev/shm', name), { recursive: true, force: true }) }
    }
  } catch { /* no /dev/shm */ }
  shared ??= new CommandShell()
  process.once('exit', () => shared?.close())
  return shared
}

export function commandShell(): CommandShell | undefined {
  return shared
}
