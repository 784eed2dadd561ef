import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInvalidArgument } from '../core/index.js'
import { parseFlyToml } from './app-config.js'
import { FlyTomlError } from './config-reader.js'
import { defaultFlyToml } from './default-fly-toml.js'
import { deploySettings, machineConfigForGroup, machineConfigsForDeploy, maxUnavailableCount, releaseCommandMachineConfig } from './machine-configs.js'
import { DEFAULT_GUEST } from './vm-sizes.js'

function problems(source: string): Array<{ line?: number; key: string; message: string }> {
  try {
    parseFlyToml(source)
  } catch (err) {
    assert.ok(err instanceof FlyTomlError, `expected FlyTomlError, got ${String(err)}`)
    assert.ok(isInvalidArgument(err))
    return [...err.problems]
  }
  assert.fail('expected the fly.toml to be refused')
}

test('an http_service gets Fly\'s defaults: 80 http, 443 tls+http, port 8080, autostop off, autostart on', () => {
  const { config, warnings } = parseFlyToml('app = "a"\n[http_service]\n')
  assert.deepEqual(warnings, [])
  const [service] = machineConfigForGroup(config, 'app', { image: 'i' }).services!
  assert.deepEqual(service, {
    protocol: 'tcp',
    internal_port: 8080,
    ports: [{ port: 80, handlers: ['http'], force_https: false }, { port: 443, handlers: ['tls', 'http'] }],
    concurrency: { type: 'connections', soft_limit: 20 },
    autostop: 'off',
    autostart: true,
    min_machines_running: 0,
  })
})

test('auto_stop_machines takes the words and the legacy booleans', () => {
  const autostop = (value: string) => parseFlyToml(`[http_service]\nauto_stop_machines = ${value}\n`).config.httpService!.autostop
  assert.equal(autostop('"off"'), 'off')
  assert.equal(autostop('"stop"'), 'stop')
  assert.equal(autostop('"suspend"'), 'suspend')
  assert.equal(autostop('true'), 'stop')
  assert.equal(autostop('false'), 'off')
  assert.deepEqual(problems('[http_service]\nauto_stop_machines = "sometimes"\n'), [
    { line: 2, key: 'http_service.auto_stop_machines', message: 'must be "off", "stop", "suspend" (or true/false), got "sometimes"' },
  ])
})

test('wrong types fail with the line and the key, all of them at once', () => {
  const source = [
    'app = "a"',                   // 1
    'kill_timeout = true',         // 2
    '[http_service]',              // 3
    '  internal_port = "eighty"',  // 4
    '  force_https = "yes"',       // 5
    '[[services]]',                // 6
    '  internal_port = 5432',      // 7
    '  [[services.ports]]',        // 8
    '    port = 70000',            // 9
    '    handlers = ["https"]',    // 10
  ].join('\n')
  const found = problems(source)
  assert.deepEqual(found, [
    { line: 2, key: 'kill_timeout', message: 'expected a duration like "10s" or a whole number of seconds, got the boolean true' },
    { line: 4, key: 'http_service.internal_port', message: 'expected a port number (1-65535), got the string "eighty"' },
    { line: 5, key: 'http_service.force_https', message: 'expected true or false, got the string "yes"' },
    { line: 9, key: 'services[0].ports[0].port', message: 'must be at most 65535, got 70000' },
    { line: 10, key: 'services[0].ports[0].handlers[0]', message: 'handler "https" is not one of http, tls, pg_tls, proxy_proto' },
  ])
  let message = ''
  try { parseFlyToml(source, { fileName: 'apps/a/fly.toml' }) } catch (err) { message = (err as Error).message }
  assert.match(message, /^apps\/a\/fly\.toml:2: kill_timeout: expected a duration/m)
  assert.match(message, /^apps\/a\/fly\.toml:10: services\[0\]\.ports\[0\]\.handlers\[0\]: handler "https"/m)
})

test('a TOML syntax error names its line and column', () => {
  const found = problems('app = "a"\n[http_service\ninternal_port = 1\n')
  assert.equal(found.length, 1)
  assert.equal(found[0]!.line, 2)
  assert.match(found[0]!.message, /^TOML syntax error at column \d+: /)
})

test('unknown keys are warnings with lines, not errors', () => {
  const { warnings } = parseFlyToml('app = "a"\nregion = "x"\n[http_service]\n  internal_prot = 8080\n[deploy]\n  seed_command = "x"\n')
  assert.deepEqual(warnings, [
    { line: 2, key: 'region', message: 'unknown key "region" at the top level is ignored' },
    { line: 4, key: 'http_service.internal_prot', message: 'unknown key "internal_prot" in [http_service] is ignored' },
    { line: 6, key: 'deploy.seed_command', message: 'seed_command is not supported by Hangar and is ignored' },
  ])
})

test('[[statics]] is refused clearly', () => {
  assert.deepEqual(problems('[[statics]]\n  guest_path = "/app/public"\n  url_prefix = "/static"\n'), [
    { line: 1, key: 'statics', message: 'statics are not supported by Hangar; serve static files from the app itself' },
  ])
})

test('process references must name defined groups; without [processes] only "app" exists', () => {
  assert.deepEqual(problems('[processes]\n  web = "serve"\n[http_service]\n  processes = ["app"]\n'), [
    { line: 4, key: 'http_service.processes[0]', message: 'unknown process group "app" (this fly.toml defines: web)' },
  ])
  assert.deepEqual(problems('[[mounts]]\n  source = "d"\n  destination = "/d"\n  processes = ["worker"]\n'), [
    { line: 4, key: 'mounts[0].processes[0]', message: 'unknown process group "worker" (this fly.toml defines: app)' },
  ])
})

test('sections without processes apply to the default group only; [[vm]] without processes to all', () => {
  const { config } = parseFlyToml([
    '[processes]', '  web = "serve"', '  worker = "work"',
    '[http_service]',
    '[[vm]]', '  size = "shared-cpu-2x"',
    '[[vm]]', '  size = "performance-1x"', '  processes = ["worker"]',
  ].join('\n'))
  const configs = machineConfigsForDeploy(config, { image: 'i' })
  assert.deepEqual([...configs.keys()], ['web', 'worker'])
  assert.equal(configs.get('web')!.services!.length, 1, 'web is the default group (no "app"; first by name)')
  assert.equal(configs.get('worker')!.services, undefined)
  assert.deepEqual(configs.get('web')!.guest, { cpu_kind: 'shared', cpus: 2, memory_mb: 512 })
  assert.deepEqual(configs.get('worker')!.guest, { cpu_kind: 'performance', cpus: 1, memory_mb: 2048 })
})

test('[[vm]] sizes, memory strings and limits', () => {
  const guest = (body: string) => parseFlyToml(`[[vm]]\n${body}\n`).config.vm[0]!.guest
  assert.deepEqual(guest('size = "shared-cpu-1x"'), DEFAULT_GUEST)
  assert.deepEqual(guest('memory = "1gb"'), { cpu_kind: 'shared', cpus: 1, memory_mb: 1024 })
  assert.deepEqual(guest('memory = 512'), { cpu_kind: 'shared', cpus: 1, memory_mb: 512 })
  assert.deepEqual(guest('cpus = 4'), { cpu_kind: 'shared', cpus: 4, memory_mb: 1024 })
  assert.deepEqual(guest('cpu_kind = "performance"\ncpus = 2'), { cpu_kind: 'performance', cpus: 2, memory_mb: 4096 })
  assert.deepEqual(guest('size = "performance-2x"\nmemory_mb = 8192'), { cpu_kind: 'performance', cpus: 2, memory_mb: 8192 })
  assert.deepEqual(problems('[[vm]]\nsize = "huge-1x"\n'), [{ line: 2, key: 'vm[0].size', message: 'unknown size "huge-1x"; use one of shared-cpu-1x, shared-cpu-2x, shared-cpu-4x, shared-cpu-8x, performance-1x, performance-2x, performance-4x, performance-8x, performance-16x' }])
  assert.deepEqual(problems('[[vm]]\nmemory = "3000mb"\n'), [{ line: 1, key: 'vm[0]', message: 'memory must be a multiple of 256 MB, got 3000 MB' }])
  assert.deepEqual(problems('[[vm]]\nmemory = "4gb"\n'), [{ line: 1, key: 'vm[0]', message: '1 shared CPU(s) allow at most 2048 MB of memory, got 4096 MB' }])
  assert.deepEqual(problems('[vm]\nmemory = "lots"\n'), [{ line: 2, key: 'vm.memory', message: 'expected a size like "1gb" or "512mb" (or a number of MB), got "lots"' }])
  assert.deepEqual(problems('[[vm]]\ngpu_kind = "a100-40gb"\n'), [{ line: 1, key: 'vm[0]', message: 'GPU Machines are not supported by Hangar' }])
})

test('mounts: destination not "/", one volume per Machine, sizes in GB', () => {
  const { config } = parseFlyToml('[mounts]\n  source = "data"\n  destination = "/data"\n  initial_size = "10gb"\n  auto_extend_size_threshold = 80\n  auto_extend_size_increment = "1GB"\n  auto_extend_size_limit = "20gb"\n')
  assert.deepEqual(config.mounts, [{ source: 'data', destination: '/data', initialSizeGb: 10, autoExtendSizeThreshold: 80, autoExtendSizeIncrementGb: 1, autoExtendSizeLimitGb: 20, processes: [] }])
  assert.deepEqual(machineConfigForGroup(config, 'app', { image: 'i' }).mounts, [{ name: 'data', path: '/data', extend_threshold_percent: 80, add_size_gb: 1, size_gb_limit: 20 }])
  assert.deepEqual(problems('[mounts]\n  source = "data"\n  destination = "/"\n'), [{ line: 3, key: 'mounts.destination', message: 'a volume cannot be mounted at "/"' }])
  assert.deepEqual(problems('[[mounts]]\n  source = "a"\n  destination = "/a"\n[[mounts]]\n  source = "b"\n  destination = "/b"\n'), [{ line: 1, key: 'mounts', message: 'process group app has 2 mounts; a Machine mounts at most one volume' }])
  assert.deepEqual(problems('[mounts]\n  source = "data"\n  destination = "/data"\n  initial_size = "1500mb"\n'), [{ line: 4, key: 'mounts.initial_size', message: 'volumes are sized in whole gigabytes (at least 1), got "1500mb"' }])
})

test('[[restart]] never becomes the API\'s no; the entry naming the group wins', () => {
  const { config } = parseFlyToml('[processes]\n  app = ""\n  cron = "crond -f"\n[[restart]]\n  policy = "on-failure"\n  retries = 5\n[[restart]]\n  policy = "never"\n  processes = ["cron"]\n')
  assert.deepEqual(machineConfigForGroup(config, 'cron', { image: 'i' }).restart, { policy: 'no' })
  assert.deepEqual(machineConfigForGroup(config, 'app', { image: 'i' }).restart, { policy: 'on-failure', max_retries: 5 })
  assert.equal(machineConfigForGroup(config, 'app', { image: 'i' }).init, undefined, 'an empty command runs the image CMD')
  assert.deepEqual(problems('[[restart]]\n  policy = "sometimes"\n'), [{ line: 2, key: 'restart[0].policy', message: 'must be one of "always", "never", "on-failure", got "sometimes"' }])
})

test('concurrency: defaults, the legacy "soft,hard" string, soft above hard refused', () => {
  const concurrency = (body: string) => parseFlyToml(`[[services]]\ninternal_port = 1\n${body}\n`).config.services[0]!.concurrency
  assert.deepEqual(concurrency(''), { type: 'connections', soft_limit: 20 })
  assert.deepEqual(concurrency('[services.concurrency]\ntype = "requests"\nhard_limit = 250'), { type: 'requests', soft_limit: 20, hard_limit: 250 })
  assert.deepEqual(concurrency('[services.concurrency]\nhard_limit = 10'), { type: 'connections', soft_limit: 10, hard_limit: 10 })
  assert.deepEqual(concurrency('concurrency = "20,25"'), { type: 'requests', soft_limit: 20, hard_limit: 25 })
  assert.deepEqual(problems('[[services]]\ninternal_port = 1\n[services.concurrency]\nsoft_limit = 30\nhard_limit = 25\n'), [{ line: 4, key: 'services[0].concurrency.soft_limit', message: 'soft_limit (30) must not exceed hard_limit (25)' }])
})

test('env values written as numbers or booleans become strings; PRIMARY_REGION and FLY_PROCESS_GROUP are set', () => {
  const { config } = parseFlyToml('primary_region = "ams"\n[env]\n  PORT = 8080\n  DEBUG = false\n  NAME = "x"\n')
  assert.deepEqual(machineConfigForGroup(config, 'app', { image: 'i' }).env, { PORT: '8080', DEBUG: 'false', NAME: 'x', FLY_PROCESS_GROUP: 'app', PRIMARY_REGION: 'ams' })
  assert.deepEqual(problems('[env]\n  LIST = ["a"]\n'), [{ line: 2, key: 'env.LIST', message: 'expected a string, got an array' }])
})

test('the image comes from --image or [build] image, and one is required', () => {
  const { config } = parseFlyToml('[build]\n  image = "registry.local/app:1"\n  dockerfile = "Dockerfile"\n')
  assert.equal(machineConfigForGroup(config, 'app', {}).image, 'registry.local/app:1')
  assert.equal(machineConfigForGroup(config, 'app', { image: 'other:2' }).image, 'other:2')
  assert.throws(() => machineConfigsForDeploy(parseFlyToml('').config, {}), /pass --image or set image in the \[build\] section/)
})

test('[[files]]: raw_value is base64-encoded, secret_name passes, local_path is read through the callback', () => {
  const { config } = parseFlyToml('[[files]]\n  guest_path = "/etc/motd"\n  raw_value = "hello"\n[[files]]\n  guest_path = "/etc/key"\n  secret_name = "KEY"\n[[files]]\n  guest_path = "/etc/app.conf"\n  local_path = "app.conf"\n')
  const files = machineConfigForGroup(config, 'app', { image: 'i', readLocalFile: (p) => Buffer.from(`contents of ${p}`) }).files
  assert.deepEqual(files, [
    { guest_path: '/etc/motd', raw_value: Buffer.from('hello').toString('base64') },
    { guest_path: '/etc/key', secret_name: 'KEY' },
    { guest_path: '/etc/app.conf', raw_value: Buffer.from('contents of app.conf').toString('base64') },
  ])
  assert.throws(() => machineConfigForGroup(config, 'app', { image: 'i' }), /local_path app\.conf cannot be read here/)
  assert.deepEqual(problems('[[files]]\n  guest_path = "/x"\n  raw_value = "a"\n  secret_name = "B"\n'), [{ line: 1, key: 'files[0]', message: 'a file needs exactly one of local_path, raw_value or secret_name' }])
})

test('top-level checks: type required, port from http_service when missing, processes filter', () => {
  const { config } = parseFlyToml('[http_service]\n  internal_port = 3000\n[checks.alive]\n  type = "http"\n  path = "/up"\n  method = "get"\n  interval = 15000\n[checks.tcp]\n  type = "tcp"\n  port = 3001\n  grace_period = "30s"\n')
  assert.deepEqual(machineConfigForGroup(config, 'app', { image: 'i' }).checks, {
    alive: { type: 'http', port: 3000, path: '/up', method: 'GET', interval: '15s' },
    tcp: { type: 'tcp', port: 3001, grace_period: '30s' },
  })
  assert.deepEqual(problems('[checks.x]\n  path = "/"\n'), [{ line: 1, key: 'checks.x', message: 'a check needs type = "http" or "tcp"' }])
  assert.deepEqual(problems('[checks.x]\n  type = "tcp"\n  path = "/"\n  port = 1\n'), [{ line: 3, key: 'checks.x.path', message: 'path applies only to http checks' }])
  assert.throws(() => machineConfigForGroup(parseFlyToml('[checks.x]\n  type = "tcp"\n').config, 'app', { image: 'i' }), /has no port and the group has no http_service/)
})

test('services: a port needs port or a full range; the same public port twice in a group is refused', () => {
  assert.deepEqual(problems('[[services]]\n  internal_port = 1\n  [[services.ports]]\n    start_port = 100\n'), [{ line: 3, key: 'services[0].ports[0]', message: 'a port range needs both start_port and end_port' }])
  assert.deepEqual(problems('[[services]]\n  internal_port = 1\n  [[services.ports]]\n    port = 80\n    start_port = 100\n    end_port = 200\n'), [{ line: 3, key: 'services[0].ports[0]', message: 'give either port or start_port and end_port, not both' }])
  assert.deepEqual(problems('[[services]]\n  protocol = "tcp"\n'), [{ line: 1, key: 'services[0]', message: 'a service needs internal_port (the port the app listens on inside the Machine)' }])
  assert.deepEqual(problems('[http_service]\n[[services]]\n  internal_port = 9\n  [[services.ports]]\n    port = 443\n'), [{ line: 2, key: 'services', message: 'port 443 is served twice in process group app' }])
})

test('kill_signal and kill_timeout become stop_config; bad signals are refused', () => {
  const { config } = parseFlyToml('kill_signal = "SIGINT"\nkill_timeout = "1m30s"\n')
  assert.deepEqual(machineConfigForGroup(config, 'app', { image: 'i' }).stop_config, { signal: 'SIGINT', timeout: '90s' })
  assert.deepEqual(parseFlyToml('kill_signal = "term"\n').config.killSignal, 'SIGTERM')
  assert.deepEqual(problems('kill_signal = "SIGNOPE"\n'), [{ line: 1, key: 'kill_signal', message: '"SIGNOPE" is not a signal (use a name such as "SIGINT" or "SIGTERM")' }])
})

test('[deploy] settings, max_unavailable as fraction or count, release command Machine', () => {
  const { config } = parseFlyToml('primary_region = "ams"\n[deploy]\n  strategy = "bluegreen"\n  max_unavailable = 2\n  wait_timeout = "10m"\n  release_command = "bin/rails db:migrate"\n')
  const settings = deploySettings(config)
  assert.deepEqual(settings, { strategy: 'bluegreen', maxUnavailable: 2, waitTimeoutMs: 600_000, releaseCommand: ['bin/rails', 'db:migrate'], releaseCommandTimeoutMs: 300_000 })
  assert.equal(maxUnavailableCount(settings, 10), 2)
  assert.equal(maxUnavailableCount({ maxUnavailable: 0.33 }, 10), 3)
  assert.equal(maxUnavailableCount({ maxUnavailable: 0.33 }, 2), 1, 'at least one at a time')
  assert.deepEqual(releaseCommandMachineConfig(config, { image: 'i', releaseVersion: 4 }), {
    image: 'i',
    init: { cmd: ['bin/rails', 'db:migrate'] },
    env: { RELEASE_COMMAND: '1', FLY_PROCESS_GROUP: 'fly_app_release_command', PRIMARY_REGION: 'ams' },
    metadata: { fly_process_group: 'fly_app_release_command', fly_platform_version: 'v2', fly_release_version: '4' },
    restart: { policy: 'no' },
    auto_destroy: true,
    dns: { skip_registration: true },
  })
  assert.equal(deploySettings(parseFlyToml('').config).strategy, 'rolling')
  assert.deepEqual(problems('[deploy]\n  strategy = "rolling-eyes"\n'), [{ line: 2, key: 'deploy.strategy', message: 'must be one of "rolling", "immediate", "bluegreen", "canary", got "rolling-eyes"' }])
  assert.deepEqual(problems('[deploy]\n  max_unavailable = 2.5\n'), [{ line: 2, key: 'deploy.max_unavailable', message: 'must be a fraction between 0 and 1 or a whole number of Machines, got 2.5' }])
})

test('defaultFlyToml writes what fly launch writes and reads back without warnings', () => {
  const text = defaultFlyToml('hello-world', 'ams', 'registry.local/hello:1')
  const { config, warnings } = parseFlyToml(text)
  assert.deepEqual(warnings, [])
  assert.equal(config.app, 'hello-world')
  assert.equal(config.primaryRegion, 'ams')
  assert.equal(config.build.image, 'registry.local/hello:1')
  assert.equal(config.httpService!.autostop, 'stop')
  assert.equal(config.httpService!.autostart, true)
  assert.equal(config.httpService!.minMachinesRunning, 0)
  assert.match(text, /auto_stop_machines = "stop"/)
  assert.throws(() => defaultFlyToml('Bad Name', 'ams'), /use lowercase letters/)
  assert.equal(parseFlyToml(defaultFlyToml('x1', 'lhr')).config.build.image, undefined)
})

test('a process command with an unclosed quote is a typed error naming the group', () => {
  const { config } = parseFlyToml('[processes]\n  web = "sh -c \'oops"\n')
  assert.throws(() => machineConfigForGroup(config, 'web', { image: 'i' }), (err: Error) => isInvalidArgument(err) && /processes\.web: a single quote is not closed/.test(err.message))
})
