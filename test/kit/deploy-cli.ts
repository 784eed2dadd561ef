import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

// Test kit: runs the real `hangar` CLI as a user would, against an API URL and token, and returns
// what it printed. HANGAR_CONFIG points nowhere so the machine's own CLI config is never read.

export const HANGAR_CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))

export interface CliResult { code: number | null; stdout: string; stderr: string }

export interface CliOptions {
  apiUrl: string
  token: string
  /** Written to stdin, then closed. */
  input?: string
  cwd?: string
  timeoutMs?: number
  env?: Record<string, string>
}

export function runCli(args: string[], options: CliOptions): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [HANGAR_CLI, ...args], {
      cwd: options.cwd,
      env: { ...process.env, HANGAR_API_URL: options.apiUrl, HANGAR_API_TOKEN: options.token, HANGAR_CONFIG: '/nonexistent/hangar-config.json', ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => { stdout += chunk })
    child.stderr.on('data', (chunk) => { stderr += chunk })
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`hangar ${args.join(' ')} did not finish within ${options.timeoutMs ?? 120_000} ms; stderr: ${stderr}`)) }, options.timeoutMs ?? 120_000)
    child.once('error', (err) => { clearTimeout(timer); reject(err) })
    child.once('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
    child.stdin.end(options.input ?? '')
  })
}

/** Runs the CLI and expects exit code 0; returns stdout. */
export async function cliOk(args: string[], options: CliOptions): Promise<string> {
  const result = await runCli(args, options)
  if (result.code !== 0) throw new Error(`hangar ${args.join(' ')} exited ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`)
  return result.stdout
}

/** The last non-empty line of a command's stdout (where token commands print the token). */
export function lastLine(text: string): string {
  return text.trim().split('\n').at(-1)!.trim()
}
