import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'

// Where the CLI finds the API: HANGAR_API_URL and HANGAR_API_TOKEN when set, else the config
// `hangar up` wrote (~/.hangar/config.json, or HANGAR_CONFIG).

export interface CliConfig {
  api_url: string
  token: string
  org: string
  region?: string
  data_dir?: string
}

export function configPath(): string {
  return process.env.HANGAR_CONFIG ?? join(homedir(), '.hangar', 'config.json')
}

export function readConfig(): Partial<CliConfig> {
  const path = configPath()
  if (!existsSync(path)) return {}
  try { return JSON.parse(readFileSync(path, 'utf8')) as Partial<CliConfig> } catch { return {} }
}

export function writeConfig(config: CliConfig): void {
  const path = configPath()
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, JSON.stringify(config, null, 2) + '\n', { mode: 0o600 })
}

export function resolveApi(): { url: string; token: string; org?: string } {
  const config = readConfig()
  const url = process.env.HANGAR_API_URL || config.api_url
  const token = process.env.HANGAR_API_TOKEN || config.token
  if (!url || !token) throw new Error('no Hangar API configured: run `hangar up`, or set HANGAR_API_URL and HANGAR_API_TOKEN')
  return { url: url.replace(/\/+$/, ''), token, org: process.env.HANGAR_ORG ?? config.org }
}

export function defaultDataDir(): string {
  return process.env.HANGAR_DATA_DIR ?? join(homedir(), '.hangar', 'data')
}
