import type { Command } from 'commander'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import { formatProblem, parseFlyToml, DEPLOY_STRATEGIES, type DeployStrategy, type ParsedFlyToml } from '../../config/index.js'
import { parseDurationMs } from '../../core/index.js'
import { deploy, isDeployAborted, type DeployApi, type Progress } from '../../deploy/index.js'
import { client } from './common.js'
import { info, printJson } from '../output.js'

// `hangar deploy` (flyctl deploy without building): fly.toml as it is, an image from --image or
// [build] image, Machines per process group per strategy. Every long step says what it waits for
// and how many of how many Machines are done (stderr); --json prints the result on stdout.

/** Progress lines go to stderr, so stdout stays clean for --json and tokens. */
export const progressToStderr: Progress = (event) => info(event.message)

export function deployApi(): DeployApi {
  return client()
}

/** Reads and parses fly.toml, printing its warnings. */
export function readFlyToml(path: string): ParsedFlyToml {
  if (!existsSync(path)) throw new Error(`${path} not found: run \`hangar launch\` first, or pass -c PATH`)
  const parsed = parseFlyToml(readFileSync(path, 'utf8'), { fileName: path })
  for (const warning of parsed.warnings) info(`Warning: ${formatProblem(path, warning)}`)
  return parsed
}

export function registerDeploy(program: Command): void {
  program.command('deploy')
    .description("deploy the app in fly.toml: a new release on the app's Machines")
    .option('-c, --config <path>', 'the fly.toml to use', 'fly.toml')
    .option('-a, --app <app>', 'the app (default: app in fly.toml)')
    .option('-i, --image <ref>', 'the image to deploy (default: [build] image)')
    .option('--strategy <strategy>', `rolling, immediate, canary or bluegreen (default: [deploy] strategy, else rolling)`)
    .option('--wait-timeout <duration>', 'how long each Machine may take to become healthy (default: [deploy] wait_timeout, 5m)')
    .option('--json', 'print the result as JSON')
    .action(async (opts) => {
      const path = resolve(opts.config)
      const { config } = readFlyToml(path)
      if (opts.strategy && !(DEPLOY_STRATEGIES as readonly string[]).includes(opts.strategy)) throw new Error(`--strategy ${opts.strategy}: use ${DEPLOY_STRATEGIES.join(', ')}`)
      const base = dirname(path)
      try {
        const result = await deploy({
          api: deployApi(), config, app: opts.app, image: opts.image, strategy: opts.strategy as DeployStrategy | undefined,
          waitTimeoutMs: opts.waitTimeout ? parseDurationMs(opts.waitTimeout, '--wait-timeout') : undefined,
          readLocalFile: (localPath) => readFileSync(isAbsolute(localPath) ? localPath : join(base, localPath)),
          progress: progressToStderr,
        })
        if (opts.json) printJson({ ok: true, ...result })
        else info(`Deployed release v${result.release.version} of ${result.app} (${result.image}): ${result.groups.map((g) => `${g.group} ${g.machines.length} Machine(s)`).join(', ')}`)
      } catch (err) {
        if (!isDeployAborted(err)) throw err
        if (opts.json) printJson({ ok: false, error: err.message, release: err.release, rolled_back: err.rolledBack, restore_failures: err.restoreFailures })
        info(`Error: deploy aborted: ${err.message}`)
        if (err.rolledBack) info(err.restoreFailures.length ? `Some Machines could not be put back: ${err.restoreFailures.join('; ')}` : 'The previous release is still serving.')
        process.exitCode = 1
      }
    })
}
