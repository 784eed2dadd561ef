import type { Command } from 'commander'
import { resolve } from 'node:path'
import { launch } from '../../deploy/index.js'
import { readConfig, resolveApi } from '../config.js'
import { client } from './common.js'
import { info, printJson } from '../output.js'
import { progressToStderr } from './deploy.js'

// `hangar launch`: the app and a fly.toml (if there is none yet), ready for `hangar deploy`.

export function registerLaunch(program: Command): void {
  program.command('launch')
    .description('create the app (and a fly.toml if there is none) for `hangar deploy`')
    .option('-c, --config <path>', 'the fly.toml to read or write', 'fly.toml')
    .option('--name <app>', 'the app name (default: app in fly.toml)')
    .option('-o, --org <slug>', 'the organization the app belongs to')
    .option('-r, --region <code>', 'primary region for a new fly.toml (default: the nearest region of the API)')
    .option('-i, --image <ref>', 'the image a new fly.toml deploys ([build] image)')
    .option('--json', 'print the result as JSON')
    .action(async (opts) => {
      const api = client()
      let region: string | undefined = opts.region
      if (!region) {
        const regions = await api.platformRegions().catch(() => undefined)
        region = regions?.nearest || readConfig().region || 'local'
      }
      const result = await launch({ api, configPath: resolve(opts.config), name: opts.name, org: opts.org ?? resolveApi().org, region, image: opts.image, progress: progressToStderr })
      if (opts.json) printJson(result)
      else info(`App ${result.app} (org ${result.org}) is ready${result.wroteConfig ? `; wrote ${result.configPath}` : ''}. Deploy it with: hangar deploy${result.wroteConfig && !opts.image ? ' --image <ref>' : ''}`)
    })
}
