import type { Command } from 'commander'
import { client } from './common.js'
import { info, printJson, printTable } from '../output.js'
import { resolveApi } from '../config.js'

export function registerApps(program: Command): void {
  const apps = program.command('apps').description('manage apps')
  apps.command('create <name>')
    .description('create an app')
    .option('-o, --org <slug>', 'the org the app belongs to')
    .option('--json', 'print the app as JSON')
    .action(async (name: string, opts) => {
      const app = await client().createApp(name, opts.org ?? resolveApi().org)
      if (opts.json) printJson(app)
      else info(`New app created: ${app.name} (org ${app.organization.slug})`)
    })
  apps.command('list')
    .description('list apps')
    .option('-o, --org <slug>', 'only this org')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const { apps: list } = await client().listApps(opts.org)
      if (opts.json) printJson(list)
      else printTable(list.map((a) => ({ name: a.name, org: a.organization.slug, status: a.status, machines: a.machine_count })), ['name', 'org', 'status', 'machines'])
    })
  apps.command('destroy <name>')
    .description('destroy an app and all its Machines')
    .option('-y, --yes', 'do not ask (always true: Hangar does not prompt)')
    .option('--json', 'print as JSON')
    .action(async (name: string, opts) => {
      await client().deleteApp(name)
      if (opts.json) printJson({ destroyed: name })
      else info(`Destroyed app ${name}`)
    })
}
