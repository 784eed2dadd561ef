import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { InvalidArgumentError, APP_NAME_PATTERN } from '../core/index.js'
import { defaultFlyToml, parseFlyToml } from '../config/index.js'
import { noProgress, type DeployApi, type Progress } from './ports.js'

// `hangar launch` (flyctl launch, without building): uses the fly.toml that is there, or writes
// one (src/config defaultFlyToml), and creates the app if it does not exist yet.

export interface LaunchOptions {
  api: Pick<DeployApi, 'getApp' | 'createApp'>
  /** Path of fly.toml (read if present, written if not). */
  configPath: string
  name?: string
  org?: string
  region: string
  image?: string
  progress?: Progress
}

export interface LaunchResult { app: string; org: string; configPath: string; wroteConfig: boolean; createdApp: boolean }

export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const progress = options.progress ?? noProgress
  let app: string
  let wroteConfig = false
  if (existsSync(options.configPath)) {
    const { config } = parseFlyToml(readFileSync(options.configPath, 'utf8'), { fileName: options.configPath })
    if (options.name && config.app && options.name !== config.app) throw new InvalidArgumentError(`${options.configPath} is for app ${config.app}, not ${options.name}`)
    const name = options.name ?? config.app
    if (!name) throw new InvalidArgumentError(`${options.configPath} has no app = "…": add one or pass --name`)
    app = name
    progress({ step: 'plan', message: `using ${options.configPath} (app ${app})` })
  } else {
    if (!options.name) throw new InvalidArgumentError('there is no fly.toml here: pass --name for the new app')
    if (!APP_NAME_PATTERN.test(options.name)) throw new InvalidArgumentError(`app name ${JSON.stringify(options.name)} must be lowercase letters, digits and dashes`)
    app = options.name
    writeFileSync(options.configPath, defaultFlyToml(app, options.region, options.image), { flag: 'wx' })
    wroteConfig = true
    progress({ step: 'plan', message: `wrote ${options.configPath} for app ${app} (primary region ${options.region})` })
  }
  let createdApp = false
  let org: string
  try {
    org = (await options.api.getApp(app)).organization.slug
    progress({ step: 'plan', message: `app ${app} already exists (org ${org})` })
  } catch (err) {
    if ((err as { status?: number }).status !== 404) throw err
    org = (await options.api.createApp(app, options.org)).organization.slug
    createdApp = true
    progress({ step: 'create', message: `created app ${app} in org ${org}` })
  }
  return { app, org, configPath: options.configPath, wroteConfig, createdApp }
}
