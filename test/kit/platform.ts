import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomInt } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { startApi, type RunningApi } from '../../src/api/index.js'
import { startNatsServer, type NatsServer } from '../../src/bus/index.js'
import { cleanupHost } from '../../src/host/index.js'
import { eventually } from './eventually.js'
import { silentLogger, createLogger } from '../../src/core/index.js'
import { ApiClient } from '../../src/cli/api-client.js'
import { randomSubnet } from './agent-host.js'
import { freePort } from '../../src/core/index.js'

// A whole one-host platform for end-to-end tests: a real nats-server, the API (in this process),
// and `hangar host` as its own process (supervisor + agent), in temp dirs. Everything it starts is
// stopped and removed by close(), also after a failed test.

export const CLI_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))

export interface Platform {
  natsUrl: string
  api: RunningApi
  apiUrl: string
  token: string
  org: string
  region: string
  hostDir: string
  /** Data dirs of the hosts beyond the first (`extraHosts`), which run no proxy. */
  extraHostDirs: string[]
  /** The loopback address the host's proxy binds apps' public ports on (e.g. 80 for http_service). */
  proxyAddr: string
  /** Lines `kind:step:begin|done` make the agent kill itself with SIGKILL there (crash tests). */
  crashPointsFile: string
  client: ApiClient
  agentPid(): number | undefined
  /** Waits until the supervisor has restarted the agent and it answers again. */
  waitForAgent(previousPid?: number): Promise<number>
  /** Raw fetch against the API with the platform's token (or another). */
  fetch(path: string, init?: RequestInit & { token?: string | null }): Promise<Response>
  close(): Promise<void>
}

/** A free loopback port (the core helper, re-exported for the kit's users). */
export { freePort }

export async function startPlatform(options: { region?: string; hostArgs?: string[]; extraHosts?: Array<{ region: string; args?: string[] }> } = {}): Promise<Platform> {
  const region = options.region ?? 'tst'
  const root = mkdtempSync(join(tmpdir(), 'hangar-platform-'))
  const hostDir = join(root, 'host')
  const crashPointsFile = join(root, 'crash-points')
  writeFileSync(crashPointsFile, '')
  const logger = process.env.HANGAR_TEST_LOGS ? createLogger('api') : silentLogger
  let nats: NatsServer | undefined
  let api: RunningApi | undefined
  let host: ChildProcess | undefined
  const extraHosts: Array<{ process: ChildProcess; dir: string }> = []
  const stopHost = async (child: ChildProcess | undefined, dir: string) => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
      await exited
      clearTimeout(timer)
    }
    const agentPidFile = join(dir, 'agent.pid')
    if (existsSync(agentPidFile)) {
      const pid = Number(readFileSync(agentPidFile, 'utf8'))
      try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
      // Gone, not just signalled: a dying agent still holds its database and its Machines.
      await eventually('the agent to be gone', () => { try { process.kill(pid, 0); return false } catch { return true } }, 10_000, 10).catch(() => undefined)
    }
    // cleanupHost unmounts the machines pool whatever else fails.
    await cleanupHost(dir).catch((err: Error) => { process.stderr.write(`platform kit: cleaning up host ${dir} failed: ${err.stack ?? err.message}\n`) })
  }
  const close = async () => {
    await stopHost(host, hostDir)
    for (const extra of extraHosts) await stopHost(extra.process, extra.dir)
    await api?.close()
    await nats?.stop()
    rmSync(root, { recursive: true, force: true })
  }
  try {
    nats = await startNatsServer({ dataDir: join(root, 'nats'), port: await freePort() })
    api = await startApi({ natsUrl: nats.url, dbPath: join(root, 'api', 'api.db'), region, logger })
    api.store.createOrg('personal')
    const token = api.store.createStaticToken('personal', 'test')
    const proxyAddr = `127.${randomInt(1, 255)}.${randomInt(0, 256)}.${randomInt(1, 255)}`
    const log = openSync(join(root, 'host.log'), 'a')
    const gossipPort = await freePort()
    const catalogArgs = async (join: string[]) => ['--catalog-port', String(await freePort()), '--catalog-api-port', String(await freePort()), ...(join.length ? ['--join', join.join(',')] : [])]
    host = spawn(process.execPath, ['--enable-source-maps', CLI_MAIN, 'host', '--data-dir', hostDir, '--region', region, '--nats', nats.url, '--machine-subnet', randomSubnet(), '--max-restart-backoff', '500ms', '--proxy-listen', proxyAddr,
      '--catalog-port', String(gossipPort), '--catalog-api-port', String(await freePort()), '--backhaul-port', String(await freePort()), ...(options.hostArgs ?? [])], {
      stdio: ['ignore', log, log], env: { ...process.env, HANGAR_AGENT_CRASH_POINTS: crashPointsFile, HANGAR_SKIP_SETUP: '1' },
    })
    closeSync(log)
    for (const [i, extra] of (options.extraHosts ?? []).entries()) {
      const dir = join(root, `host-${i + 1}`)
      const extraLog = openSync(join(root, `host-${i + 1}.log`), 'a')
      const child = spawn(process.execPath, ['--enable-source-maps', CLI_MAIN, 'host', '--data-dir', dir, '--region', extra.region, '--nats', nats.url, '--machine-subnet', randomSubnet(), '--no-proxy',
        ...(await catalogArgs([`127.0.0.1:${gossipPort}`])), ...(extra.args ?? [])], {
        stdio: ['ignore', extraLog, extraLog], env: { ...process.env, HANGAR_SKIP_SETUP: '1' },
      })
      closeSync(extraLog)
      extraHosts.push({ process: child, dir })
    }
    const platform: Platform = {
      natsUrl: nats.url, api, apiUrl: api.url, token, org: 'personal', region, hostDir, crashPointsFile, proxyAddr, extraHostDirs: extraHosts.map((h) => h.dir),
      client: new ApiClient(api.url, token),
      agentPid() {
        try { return Number(readFileSync(join(hostDir, 'agent.pid'), 'utf8')) } catch { return undefined }
      },
      async waitForAgent(previousPid) {
        const deadline = Date.now() + 30_000
        for (;;) {
          const pid = platform.agentPid()
          if (pid && pid !== previousPid) {
            const hostId = readFileSync(join(hostDir, 'host-id'), 'utf8').trim()
            try {
              await api!.bus.call(`hangar.agent.${hostId}.rpc`, 'info', {}, 1000)
              return pid
            } catch { /* not yet */ }
          }
          if (Date.now() > deadline) throw new Error(`the agent did not come back (see ${join(root, 'host.log')} and ${join(hostDir, 'logs', 'agent.log')})`)
          await new Promise((r) => setTimeout(r, 50))
        }
      },
      fetch(path, init = {}) {
        const { token: override, ...rest } = init
        const headers = new Headers(rest.headers)
        const bearer = override === undefined ? token : override
        if (bearer !== null) headers.set('authorization', `Bearer ${bearer}`)
        return fetch(`${api!.url}${path}`, { ...rest, headers })
      },
      close,
    }
    // Ready when every host is registered.
    const deadline = Date.now() + 30_000
    while (!api.hosts.regions().includes(region) || api.hosts.alive().length < 1 + extraHosts.length) {
      if (Date.now() > deadline) throw new Error(`the host did not register (see ${join(root, 'host.log')})`)
      await new Promise((r) => setTimeout(r, 50))
    }
    return platform
  } catch (err) {
    await close()
    throw err
  }
}
