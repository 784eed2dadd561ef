import type { Command } from 'commander'
import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { scaleCount, scaleVm } from '../../deploy/index.js'
import { appName, client } from './common.js'
import { info, printJson } from '../output.js'
import { progressToStderr, readFlyToml } from './deploy.js'

// `hangar scale count N` and `hangar scale vm SIZE` (flyctl scale).

export function registerScale(program: Command): void {
  const scale = program.command('scale').description('change how many Machines an app runs, or their size')

  scale.command('count <count>')
    .description('run this many Machines of a process group (in a region, if given)')
    .option('-a, --app <app>', 'the app')
    .option('-r, --region <code>', 'only count (and add) Machines in this region')
    .option('-g, --process-group <group>', 'the process group (default: the only one, or app)')
    .option('-c, --config <path>', 'fly.toml, for a group that has no Machine yet', 'fly.toml')
    .option('--json', 'print the result as JSON')
    .action(async (countText: string, opts) => {
      if (!/^\d+$/.test(countText)) throw new Error(`count must be a whole number, got ${countText}`)
      const configPath = resolve(opts.config)
      const config = existsSync(configPath) ? readFlyToml(configPath).config : undefined
      const result = await scaleCount({ api: client(), app: appName(opts.app, opts.config), count: Number(countText), region: opts.region, group: opts.processGroup, config, progress: progressToStderr })
      if (opts.json) printJson(result)
      else info(`${result.app}: ${result.group}${result.region ? ` in ${result.region}` : ''} runs ${result.after} Machine(s) (was ${result.before})`)
    })

  scale.command('vm <size>')
    .description('resize the Machines (shared-cpu-1x … performance-16x), one at a time')
    .option('-a, --app <app>', 'the app')
    .option('--vm-memory <mb>', 'memory in MB instead of the size’s default')
    .option('-g, --process-group <group>', 'only this process group')
    .option('--json', 'print the result as JSON')
    .action(async (size: string, opts) => {
      const result = await scaleVm({ api: client(), app: appName(opts.app), size, memoryMb: opts.vmMemory ? Number(opts.vmMemory) : undefined, group: opts.processGroup, progress: progressToStderr })
      if (opts.json) printJson(result)
      else info(`${result.app}: ${result.updated.length} Machine(s) resized to ${result.guest.cpus} ${result.guest.cpu_kind} CPU(s), ${result.guest.memory_mb} MB${result.unchanged.length ? ` (${result.unchanged.length} already were)` : ''}`)
    })
}
