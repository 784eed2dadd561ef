import type { Command } from 'commander'
import type { Machine, MachineConfig, MachineService } from '../../core/index.js'
import { appName, client } from './common.js'
import { info, printJson, printTable, withSpinner } from '../output.js'

// `hangar machine …`, shaped like `fly machine …`.

const collect = (value: string, previous: string[] = []) => [...previous, value]

function parseEnv(pairs: string[] = []): Record<string, string> {
  const env: Record<string, string> = {}
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    if (eq <= 0) throw new Error(`--env ${pair}: use NAME=VALUE`)
    env[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  return env
}

/** `--port 443:8080/tcp:tls:http` or `--port 8080` (flyctl's format). */
function parsePorts(specs: string[] = []): MachineService[] {
  return specs.map((spec) => {
    const [ports, rest = 'tcp'] = spec.split('/', 2) as [string, string | undefined]
    const [publicPort, internalPort = publicPort] = ports.split(':')
    const [protocol, ...handlers] = rest.split(':')
    const port = Number(publicPort); const internal = Number(internalPort)
    if (!Number.isInteger(port) || !Number.isInteger(internal)) throw new Error(`--port ${spec}: use PUBLIC[:INTERNAL][/PROTOCOL[:HANDLER…]]`)
    return { protocol: protocol as 'tcp' | 'udp', internal_port: internal, ports: [{ port, handlers }] }
  })
}

function summary(machine: Machine) {
  return { id: machine.id, name: machine.name, state: machine.state, region: machine.region, image: `${machine.image_ref.repository}:${machine.image_ref.tag}`, ip: machine.private_ip, version: machine.instance_id, updated: machine.updated_at }
}

export function registerMachines(program: Command): void {
  const machine = program.command('machine').alias('machines').alias('m').description('manage Machines')
  const withApp = (command: Command) => command.option('-a, --app <app>', 'the app').option('--json', 'print as JSON')

  withApp(machine.command('run <image> [command...]'))
    .description('create and start a Machine from an image')
    .option('-n, --name <name>', 'Machine name')
    .option('-r, --region <code>', 'region to run in')
    .option('-e, --env <NAME=VALUE>', 'environment variable (repeatable)', collect)
    .option('-p, --port <spec>', 'expose a port, e.g. 80:8080/tcp:http (repeatable)', collect)
    .option('--entrypoint <cmd>', 'override the image entrypoint')
    .option('--memory <mb>', 'memory in MB (multiple of 256)')
    .option('--cpus <n>', 'number of CPUs')
    .option('--cpu-kind <kind>', 'shared or performance')
    .option('--restart <policy>', 'no, always or on-failure')
    .option('--autostop <mode>', 'off, stop or suspend (for services)')
    .option('--metadata <KEY=VALUE>', 'metadata (repeatable)', collect)
    .option('--rm', 'destroy the Machine when it exits (auto_destroy)')
    .option('--skip-start', 'create the Machine without starting it')
    .option('-d, --detach', 'return without waiting for the Machine to start')
    .action(async (image: string, command: string[], opts) => {
      const app = appName(opts.app)
      const config: MachineConfig = { image }
      if (command.length) config.init = { cmd: command }
      if (opts.entrypoint) config.init = { ...config.init, entrypoint: opts.entrypoint.split(' ') }
      const env = parseEnv(opts.env)
      if (Object.keys(env).length) config.env = env
      const metadata = parseEnv(opts.metadata)
      if (Object.keys(metadata).length) config.metadata = metadata
      if (opts.memory || opts.cpus || opts.cpuKind) config.guest = { memory_mb: Number(opts.memory ?? 256), cpus: Number(opts.cpus ?? 1), cpu_kind: opts.cpuKind ?? 'shared' }
      if (opts.restart) config.restart = { policy: opts.restart }
      if (opts.rm) config.auto_destroy = true
      const services = parsePorts(opts.port)
      if (opts.autostop) for (const s of services) s.autostop = opts.autostop
      if (services.length) config.services = services
      const api = client()
      const created = await withSpinner('creating the Machine…', () => api.createMachine(app, { config, name: opts.name, region: opts.region, skip_launch: opts.skipStart === true }))
      let result = created
      if (!opts.detach && !opts.skipStart && created.state !== 'started') {
        await withSpinner(`waiting for ${created.id} to start…`, () => api.waitMachine(app, created.id, 'started', 60))
        result = await api.getMachine(app, created.id)
      }
      if (opts.json) printJson(result)
      else info(`Machine ${result.id} (${result.name}) is ${result.state} in ${result.region}, private IP ${result.private_ip}`)
    })

  withApp(machine.command('list'))
    .alias('ls')
    .description("list an app's Machines")
    .option('--state <states>', 'only these states (comma-separated)')
    .action(async (opts) => {
      const app = appName(opts.app)
      const machines = await client().listMachines(app, opts.state ? `?state=${encodeURIComponent(opts.state)}` : '')
      if (opts.json) printJson(machines)
      else printTable(machines.map(summary), ['id', 'name', 'state', 'region', 'image', 'ip', 'updated'])
    })

  withApp(machine.command('status <id>'))
    .description('show a Machine')
    .action(async (id: string, opts) => {
      const m = await client().getMachine(appName(opts.app), id)
      if (opts.json) { printJson(m); return }
      const s = summary(m)
      for (const [key, value] of Object.entries(s)) info(`${key.padEnd(8)} ${value}`)
      info('events:')
      printTable(m.events.map((e) => ({ time: new Date(e.timestamp).toISOString(), type: e.type, status: e.status, source: e.source, exit: e.request?.exit_event ? `code ${e.request.exit_event.exit_code}${e.request.exit_event.oom_killed ? ' (OOM)' : ''}` : '' })), ['time', 'type', 'status', 'source', 'exit'])
    })

  const simple = (name: string, description: string, call: (app: string, id: string, opts: Record<string, string | boolean>) => Promise<unknown>, waitFor?: string) => {
    withApp(machine.command(`${name} <id>`))
      .description(description)
      .option('-s, --signal <signal>', 'signal (stop, restart)')
      .option('--timeout <duration>', 'stop timeout, e.g. 10s')
      .option('-f, --force', 'force (destroy a running Machine)')
      .action(async (id: string, opts) => {
        const app = appName(opts.app)
        const api = client()
        const result = await withSpinner(`${name} ${id}…`, () => call(app, id, opts))
        if (waitFor) await withSpinner(`waiting for ${id} to be ${waitFor}…`, () => api.waitMachine(app, id, waitFor, 60))
        if (opts.json) printJson(result ?? { ok: true })
        else info(`${name}: ${id} done`)
      })
  }
  simple('start', 'start a stopped or suspended Machine', (app, id) => client().startMachine(app, id), 'started')
  simple('stop', 'stop a Machine', (app, id, o) => client().stopMachine(app, id, { signal: o.signal as string | undefined, timeout: o.timeout as string | undefined }), 'stopped')
  simple('suspend', 'suspend a Machine (freeze it, keeping its memory)', (app, id) => client().suspendMachine(app, id), 'suspended')
  simple('restart', 'restart a Machine', (app, id, o) => client().restartMachine(app, id, o.signal ? `?signal=${encodeURIComponent(String(o.signal))}` : ''), 'started')
  simple('destroy', 'destroy a Machine', (app, id, o) => client().destroyMachine(app, id, o.force === true))

  withApp(machine.command('exec <id> <command...>'))
    .description('run a command in a Machine')
    .option('--timeout <seconds>', 'give up after this many seconds', '30')
    .action(async (id: string, command: string[], opts) => {
      const result = await client().execMachine(appName(opts.app), id, command, Number(opts.timeout))
      if (opts.json) { printJson(result); return }
      process.stdout.write(result.stdout)
      process.stderr.write(result.stderr)
      process.exitCode = result.exit_code
    })

  withApp(machine.command('update <id>'))
    .description("change a Machine's config (a new version; a running Machine is replaced)")
    .option('-i, --image <image>', 'new image')
    .option('-e, --env <NAME=VALUE>', 'set an environment variable (repeatable)', collect)
    .option('--memory <mb>', 'memory in MB')
    .option('--cpus <n>', 'number of CPUs')
    .option('--command <cmd>', 'new command (init.cmd), split on spaces')
    .action(async (id: string, opts) => {
      const app = appName(opts.app)
      const api = client()
      const current = await api.getMachine(app, id)
      const config: MachineConfig = structuredClone(current.config)
      if (opts.image) config.image = opts.image
      const env = parseEnv(opts.env)
      if (Object.keys(env).length) config.env = { ...config.env, ...env }
      if (opts.memory || opts.cpus) config.guest = { ...config.guest, ...(opts.memory ? { memory_mb: Number(opts.memory) } : {}), ...(opts.cpus ? { cpus: Number(opts.cpus) } : {}) }
      if (opts.command) config.init = { ...config.init, cmd: String(opts.command).split(' ') }
      const updated = await withSpinner(`updating ${id}…`, () => api.updateMachine(app, id, { config, current_version: current.instance_id }))
      if (opts.json) printJson(updated)
      else info(`Machine ${id} updated to version ${updated.instance_id} (${updated.state})`)
    })

  withApp(machine.command('wait <id>'))
    .description('wait for a Machine to reach a state')
    .option('--state <state>', 'started, stopped, suspended, destroyed, failed or settled', 'started')
    .option('--timeout <seconds>', 'give up after this many seconds (the API waits at most 60 per call)', '60')
    .action(async (id: string, opts) => {
      const app = appName(opts.app)
      const api = client()
      const deadline = Date.now() + Number(opts.timeout) * 1000
      // reference §1.2: one /wait blocks at most 60 s, so longer waits loop.
      const result = await withSpinner(`waiting for ${id} to be ${opts.state}…`, async () => {
        for (;;) {
          const remaining = Math.ceil((deadline - Date.now()) / 1000)
          try {
            return await api.waitMachine(app, id, opts.state, Math.min(Math.max(remaining, 1), 60))
          } catch (err) {
            if ((err as { status?: number }).status !== 408 || Date.now() >= deadline) throw err
          }
        }
      })
      if (opts.json) printJson(result)
      else info(`Machine ${id} is ${result.state}`)
    })
}
