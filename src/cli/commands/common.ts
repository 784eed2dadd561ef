import { existsSync, readFileSync } from 'node:fs'
import { ApiClient, ApiError } from '../api-client.js'
import { resolveApi } from '../config.js'

export function client(): ApiClient {
  const { url, token } = resolveApi()
  return new ApiClient(url, token)
}

/** The app from `-a`, else from `app = "…"` in ./fly.toml, as flyctl does. */
export function appName(option: string | undefined, configFile = 'fly.toml'): string {
  if (option) return option
  if (existsSync(configFile)) {
    const match = /^\s*app\s*=\s*["']([^"']+)["']/m.exec(readFileSync(configFile, 'utf8'))
    if (match) return match[1]!
  }
  throw new Error('no app given: use -a APP (or run in a directory with a fly.toml)')
}

/** Turns API errors into one clear line for people; scripts see the same text on stderr. */
export function describeError(err: unknown): string {
  if (err instanceof ApiError) return `${err.message}${err.status ? ` (HTTP ${err.status}${err.code ? `, ${err.code}` : ''})` : ''}`
  return err instanceof Error ? err.message : String(err)
}
