import type { Command } from 'commander'
import { readFileSync } from 'node:fs'
import { rollMachines, isDeployAborted } from '../../deploy/index.js'
import { appName, client } from './common.js'
import { info, printJson, printTable } from '../output.js'
import { progressToStderr } from './deploy.js'

// `hangar secrets set|unset|list|import` (flyctl secrets). Values go to the API and never come
// back; setting or unsetting restarts the app's Machines with the new values unless --stage.

function parsePairs(pairs: string[]): Record<string, string> {
  const values: Record<string, string> = {}
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    // The message names the argument's name part only: a value must never be echoed.
    if (eq <= 0) throw new Error(`${pair.slice(0, Math.max(eq, 0)) || 'an argument'}: use NAME=VALUE`)
    values[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  return values
}

async function apply(app: string, changes: Record<string, string | null>, opts: { stage?: boolean; json?: boolean }): Promise<void> {
  const api = client()
  const result = await api.updateSecrets(app, changes)
  const names = Object.keys(changes)
  let roll: { updated: string[] } | undefined
  if (!opts.stage) {
    try {
      roll = await rollMachines({ api, app, progress: progressToStderr })
    } catch (err) {
      if (!isDeployAborted(err)) throw err
      if (opts.json) printJson({ ok: false, version: result.version, names, error: err.message })
      info(`Error: secrets are saved (version ${result.version}) but restarting the Machines failed: ${err.message}`)
      process.exitCode = 1
      return
    }
  }
  if (opts.json) { printJson({ ok: true, version: result.version, names, staged: opts.stage === true, restarted: roll?.updated ?? [] }); return }
  info(`Secrets ${names.join(', ')} ${Object.values(changes).every((v) => v === null) ? 'unset' : 'set'} (version ${result.version}).${opts.stage ? ' Staged: Machines get them at the next deploy or start.' : ` ${roll?.updated.length ?? 0} Machine(s) restarted with them.`}`)
}

export function registerSecrets(program: Command): void {
  const secrets = program.command('secrets').alias('secret').description("manage an app's secrets (env for its Machines; values are never shown)")

  secrets.command('set <pairs...>')
    .description('set NAME=VALUE secrets and restart the Machines with them')
    .option('-a, --app <app>', 'the app')
    .option('--stage', 'save only; do not restart the Machines')
    .option('--json', 'print as JSON')
    .action(async (pairs: string[], opts) => apply(appName(opts.app), parsePairs(pairs), opts))

  secrets.command('import')
    .description('set NAME=VALUE lines read from stdin (keeps values out of the shell history)')
    .option('-a, --app <app>', 'the app')
    .option('--stage', 'save only; do not restart the Machines')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const lines = readFileSync(0, 'utf8').split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => l.trim() && !l.trimStart().startsWith('#'))
      await apply(appName(opts.app), parsePairs(lines), opts)
    })

  secrets.command('unset <names...>')
    .description('remove secrets and restart the Machines without them')
    .option('-a, --app <app>', 'the app')
    .option('--stage', 'save only; do not restart the Machines')
    .option('--json', 'print as JSON')
    .action(async (names: string[], opts) => apply(appName(opts.app), Object.fromEntries(names.map((n) => [n, null])), opts))

  secrets.command('list')
    .alias('ls')
    .description("list an app's secrets: names, digests and dates (never values)")
    .option('-a, --app <app>', 'the app')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const { secrets: list } = await client().listSecrets(appName(opts.app))
      if (opts.json) printJson(list)
      else printTable(list.map((s) => ({ name: s.name, digest: s.digest, created: s.created_at, updated: s.updated_at })), ['name', 'digest', 'created', 'updated'])
    })
}
