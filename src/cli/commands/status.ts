import type { Command } from 'commander'
import { appStatus } from '../../deploy/index.js'
import { appName, client } from './common.js'
import { info, printJson, printTable } from '../output.js'

// `hangar status`: Machines by region, with state, checks and release version.

export function registerStatus(program: Command): void {
  program.command('status')
    .description("show an app's Machines by region: state, checks, release")
    .option('-a, --app <app>', 'the app')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const status = await appStatus(client(), appName(opts.app))
      if (opts.json) { printJson(status); return }
      const release = status.release
      info(`App ${status.app}${release ? `: release v${release.version} ${release.status} (${release.image}, ${release.strategy})` : ': not deployed yet'}`)
      if (status.machines.length === 0) { info('No Machines.'); return }
      for (const [region, ids] of Object.entries(status.regions)) {
        process.stdout.write(`\nRegion ${region} (${ids.length} Machine${ids.length === 1 ? '' : 's'})\n`)
        printTable(status.machines.filter((m) => m.region === region).map((m) => ({
          id: m.id, group: m.group, state: m.state + (m.cordoned ? ' (cordoned)' : ''),
          checks: m.checks.total ? `${m.checks.passing}/${m.checks.total} passing` : '-',
          release: m.release !== undefined ? `v${m.release}` : '-', image: m.image, updated: m.updated_at,
        })), ['id', 'group', 'state', 'checks', 'release', 'image', 'updated'])
      }
    })
}
