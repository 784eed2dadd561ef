import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse } from 'smol-toml'
import { defaultFlyToml, deploySettings, FlyTomlError, machineConfigsForDeploy, parseFlyToml, releaseCommandMachineConfig, type DeployInput } from '../src/config/index.js'

// Issue 5: a fixture set of real-world-shaped fly.toml files, each parsed to Machine configs and
// compared with the expected configs in the JSON beside it. A JSON either holds
//   { input?, warnings, deploy, machineConfigs: {group: MachineConfig}, releaseCommandMachine? }
// or, for a file Hangar must refuse, { problems: [{line, key, message}] }.

// Compiled to dist/test/; the fixtures stay in the source tree.
const FIXTURES = fileURLToPath(new URL('../../test/fixtures/fly-toml/', import.meta.url))
const tomlFiles = readdirSync(FIXTURES).filter((f) => f.endsWith('.toml')).sort()

interface Expected {
  input?: Partial<DeployInput>
  warnings?: unknown[]
  deploy?: unknown
  machineConfigs?: Record<string, unknown>
  releaseCommandMachine?: unknown
  problems?: unknown[]
}

test('the fixture set is present', () => {
  assert.ok(tomlFiles.length >= 10, `found ${tomlFiles.length} fixtures`)
})

for (const file of tomlFiles) {
  test(`fixture ${file} parses to the expected Machine configs`, () => {
    const source = readFileSync(join(FIXTURES, file), 'utf8')
    const expected = JSON.parse(readFileSync(join(FIXTURES, file.replace(/\.toml$/, '.json')), 'utf8')) as Expected
    if (expected.problems) {
      assert.throws(() => parseFlyToml(source, { fileName: file }), (err: unknown) => {
        assert.ok(err instanceof FlyTomlError, `expected FlyTomlError, got ${String(err)}`)
        assert.equal(err.httpStatus, 400)
        assert.deepEqual(err.problems, expected.problems)
        // The message names file, line and key for each problem.
        for (const p of expected.problems as Array<{ line: number; key: string }>) assert.ok(err.message.includes(`${file}:${p.line}: ${p.key ? p.key + ': ' : ''}`), err.message)
        return true
      })
      return
    }
    const { config, warnings } = parseFlyToml(source, { fileName: file })
    const input: DeployInput = {
      releaseId: '01JAAAAAAAAAAAAAAAAAAAAAAA',
      releaseVersion: 7,
      readLocalFile: (localPath) => readFileSync(join(FIXTURES, localPath)),
      ...expected.input,
    }
    assert.deepEqual(warnings, expected.warnings ?? [])
    assert.deepEqual(deploySettings(config), expected.deploy)
    const configs = machineConfigsForDeploy(config, input)
    assert.deepEqual(Object.fromEntries(configs), expected.machineConfigs)
    assert.deepEqual(releaseCommandMachineConfig(config, input), expected.releaseCommandMachine)
    // Every config is plain JSON: what the API receives is what was compared.
    for (const machineConfig of configs.values()) assert.deepEqual(JSON.parse(JSON.stringify(machineConfig)), machineConfig)
  })
}

test('launch-default.toml is exactly what hangar launch writes', () => {
  assert.equal(readFileSync(join(FIXTURES, 'launch-default.toml'), 'utf8'), defaultFlyToml('hello-hangar', 'ams', 'registry.example.com/hello:1'))
})

// Every key issue 5 lists appears in at least one fixture, so the set above exercises them all.
const REQUIRED_KEYS = [
  'app', 'primary_region', 'kill_signal', 'kill_timeout', 'swap_size_mb', 'console_command', 'build.image', 'build.dockerfile', 'env', 'processes',
  'http_service.internal_port', 'http_service.force_https', 'http_service.auto_stop_machines', 'http_service.auto_start_machines', 'http_service.min_machines_running',
  'http_service.processes', 'http_service.concurrency.type', 'http_service.concurrency.soft_limit', 'http_service.concurrency.hard_limit', 'http_service.http_options', 'http_service.tls_options', 'http_service.checks.path',
  'services.internal_port', 'services.protocol', 'services.processes', 'services.auto_stop_machines', 'services.auto_start_machines', 'services.min_machines_running',
  'services.ports.port', 'services.ports.start_port', 'services.ports.end_port', 'services.ports.handlers', 'services.ports.force_https', 'services.ports.tls_options', 'services.ports.proxy_proto_options', 'services.ports.http_options',
  'services.concurrency.type', 'services.concurrency.soft_limit', 'services.concurrency.hard_limit', 'services.tcp_checks.interval', 'services.http_checks.path',
  'checks', 'vm.size', 'vm.memory', 'vm.memory_mb', 'vm.cpus', 'vm.cpu_kind', 'vm.processes',
  'mounts.source', 'mounts.destination', 'mounts.processes', 'mounts.initial_size',
  'restart.policy', 'restart.retries', 'restart.processes',
  'deploy.strategy', 'deploy.release_command', 'deploy.max_unavailable', 'deploy.wait_timeout',
  'files.guest_path', 'files.local_path', 'files.raw_value', 'files.secret_name', 'files.processes',
  'statics', 'metrics.port', 'experimental.cmd', 'experimental.entrypoint', 'experimental.exec',
]

function keyPaths(value: unknown, prefix: string, out: Set<string>): void {
  if (Array.isArray(value)) { for (const item of value) keyPaths(item, prefix, out); return }
  if (value === null || typeof value !== 'object' || value instanceof Date) return
  for (const [key, child] of Object.entries(value)) {
    const path = prefix === '' ? key : `${prefix}.${key}`
    out.add(path)
    keyPaths(child, path, out)
  }
}

test('the fixtures cover every fly.toml key issue 5 names', () => {
  const seen = new Set<string>()
  for (const file of tomlFiles) {
    try { keyPaths(parse(readFileSync(join(FIXTURES, file), 'utf8')), '', seen) } catch { /* the syntax-error fixture */ }
  }
  const missing = REQUIRED_KEYS.filter((k) => !seen.has(k))
  assert.deepEqual(missing, [])
  const autostops = new Set<string>()
  for (const file of tomlFiles) {
    for (const line of readFileSync(join(FIXTURES, file), 'utf8').split('\n')) {
      const m = /^\s*auto_stop_machines\s*=\s*(.+?)\s*$/.exec(line)
      if (m) autostops.add(m[1]!)
    }
  }
  for (const form of ['"off"', '"stop"', '"suspend"', 'true']) assert.ok(autostops.has(form), `auto_stop_machines = ${form} appears in a fixture`)
})
