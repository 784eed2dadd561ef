import type { Command } from 'commander'
import { appName, client } from './common.js'

export function registerLogs(program: Command): void {
  program.command('logs')
    .description("stream an app's logs, live")
    .option('-a, --app <app>', 'the app')
    .option('-i, --machine <id>', 'only this Machine')
    .option('--json', 'one JSON object per line')
    .action(async (opts) => {
      const app = appName(opts.app)
      const controller = new AbortController()
      process.once('SIGINT', () => controller.abort())
      process.once('SIGTERM', () => controller.abort())
      try {
        await client().streamLogs(app, (line) => {
          if (opts.machine && line.machine_id !== opts.machine) return
          if (opts.json) process.stdout.write(JSON.stringify(line) + '\n')
          else process.stdout.write(`${line.timestamp} app[${line.machine_id}] ${line.region} [${line.stream === 'stderr' ? 'err' : 'info'}] ${line.message}\n`)
        }, controller.signal)
      } catch (err) {
        if (!controller.signal.aborted) throw err
      }
    })
}
