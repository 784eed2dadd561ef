import { spawn, type SpawnOptions } from 'node:child_process'
import { commandShell } from './command-shell.js'

// Running the host's tools (ip, mount, crun, conmon). One helper so every call has a timeout,
// captures output for the error message, and never throws an unhandled 'error' event.

export interface CommandResult {
  code: number
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export class CommandError extends Error {
  readonly result: CommandResult
  constructor(command: string, args: readonly string[], result: CommandResult) {
    const detail = (result.stderr || result.stdout).trim().split('\n').slice(-3).join(' | ')
    super(`${command} ${args.slice(0, 4).join(' ')}${args.length > 4 ? ' …' : ''} failed (${result.signal ?? `exit ${result.code}`}): ${detail}`)
    this.name = 'CommandError'
    this.result = result
  }
}

export interface RunOptions {
  input?: string | Buffer
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Resolve with the result even when the exit code is not 0. */
  allowFailure?: boolean
  maxOutputBytes?: number
}

export function runCommand(command: string, args: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
  const shell = commandShell()
  if (shell && options.env === undefined) {
    return shell.run(command, args, { input: options.input, cwd: options.cwd, timeoutMs: options.timeoutMs, maxOutputBytes: options.maxOutputBytes }).then((result) => {
      if (result.code !== 0 && !options.allowFailure) throw new CommandError(command, args, result)
      return result
    })
  }
  const maxOutput = options.maxOutputBytes ?? 4 * 1024 * 1024
  return new Promise((resolve, reject) => {
    const spawnOptions: SpawnOptions = { stdio: ['pipe', 'pipe', 'pipe'], env: options.env ?? process.env, cwd: options.cwd }
    const child = spawn(command, args, spawnOptions)
    const stdout: Buffer[] = []
    const stderr: Buffer[] = []
    let outBytes = 0
    const collect = (into: Buffer[]) => (chunk: Buffer) => {
      outBytes += chunk.length
      if (outBytes <= maxOutput) into.push(chunk)
    }
    child.stdout!.on('data', collect(stdout))
    child.stderr!.on('data', collect(stderr))
    let timer: NodeJS.Timeout | undefined
    if (options.timeoutMs) timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs)
    child.on('error', (err) => {
      if (timer) clearTimeout(timer)
      reject(new Error(`cannot run ${command}: ${err.message}`))
    })
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer)
      const result: CommandResult = { code: code ?? -1, signal, stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString() }
      if (result.code !== 0 && !options.allowFailure) reject(new CommandError(command, args, result))
      else resolve(result)
    })
    child.stdin!.on('error', () => { /* the tool may exit before reading its input */ })
    if (options.input !== undefined) child.stdin!.end(options.input)
    else child.stdin!.end()
  })
}
