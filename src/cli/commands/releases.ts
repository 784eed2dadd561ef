import type { Command } from 'commander'
import { appName, client } from './common.js'
import { printJson, printTable } from '../output.js'

// `hangar releases`: an app's releases, newest first.

export function registerReleases(program: Command): void {
  program.command('releases')
    .description("list an app's releases")
    .option('-a, --app <app>', 'the app')
    .option('--limit <n>', 'how many', '20')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const { releases } = await client().listReleases(appName(opts.app), Number(opts.limit))
      if (opts.json) { printJson(releases); return }
      printTable(releases.map((r) => ({ version: `v${r.version}`, status: r.status, strategy: r.strategy, image: r.image, created: r.created_at, error: r.error ?? '' })), ['version', 'status', 'strategy', 'image', 'created', 'error'])
    })
}
