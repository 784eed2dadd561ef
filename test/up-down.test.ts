import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { request } from 'node:http'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { CLI_MAIN } from './kit/platform.js'
import { eventually } from './kit/eventually.js'
import { alive } from '../src/cli/commands/up.js'

// The Quickstart's `hangar up`, as a user runs it: two instances side by side (`--data-dir`), each
// printing its JSON, running the printed example end to end, and `hangar down` leaving nothing.

const run = promisify(execFile)

function httpGet(address: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: address, port: 80, path: '/', headers: { host }, timeout: 10_000 }, (res) => {
      let body = ''
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.end()
  })
}

function pidFiles(dir: string): string[] {
  const found: string[] = []
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) if (entry.isFile() && entry.name.endsWith('.pid')) found.push(join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name))
  return found
}

test('hangar up --detach --json and hangar down: two instances never collide, the example runs, nothing is left', { timeout: 240_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hangar-up-'))
  const dirs = [join(root, 'one'), join(root, 'two')]
  const env = (i: number) => ({ ...process.env, HANGAR_SKIP_SETUP: '1', HANGAR_CONFIG: join(root, `config-${i}.json`), HANGAR_API_URL: '', HANGAR_API_TOKEN: '' })
  const hangar = (i: number, ...args: string[]) => run(process.execPath, [CLI_MAIN, ...args], { env: env(i), timeout: 120_000 })
  t.after(async () => {
    for (const [i, dir] of dirs.entries()) await hangar(i, 'down', '--data-dir', dir).catch(() => undefined)
    rmSync(root, { recursive: true, force: true })
  })

  const states = []
  for (const [i, dir] of dirs.entries()) {
    const { stdout } = await hangar(i, 'up', '--detach', '--json', '--data-dir', dir, '--region', `r${i}`)
    const state = JSON.parse(stdout)
    for (const key of ['api_url', 'token', 'org', 'region', 'proxy_addr', 'data_dir', 'hosts']) assert.ok(key in state, `up --json has ${key}`)
    assert.equal(state.region, `r${i}`)
    assert.equal(state.data_dir, dir)
    assert.equal(state.hosts.length, 1)
    for (const key of ['id', 'region', 'addr', 'pid', 'catalog_url']) assert.ok(key in state.hosts[0], `host has ${key}`)
    assert.ok(alive(state.hosts[0].pid))
    const config = JSON.parse(readFileSync(join(root, `config-${i}.json`), 'utf8'))
    assert.equal(config.api_url, state.api_url, 'the CLI config points at this instance')
    states.push(state)
  }
  assert.notEqual(states[0].api_url, states[1].api_url)
  assert.notEqual(states[0].proxy_addr, states[1].proxy_addr)
  for (const dir of dirs) {
    const names = pidFiles(dir).map((f) => f.split('/').pop())
    for (const component of ['nats.pid', 'api.pid', 'host.pid', 'agent.pid', 'proxy.pid', 'registry.pid']) assert.ok(names.includes(component), `${dir} has ${component} (${names.join(', ')})`)
  }

  // The example `hangar up` prints, on each instance: an app, a Machine, a request through the proxy.
  for (const [i, state] of states.entries()) {
    await hangar(i, 'apps', 'create', 'hello')
    const { stdout } = await hangar(i, 'machine', 'run', `${state.registry}/hangar/hello`, '-a', 'hello', '-p', '80:8080/tcp:http', '--json')
    const machine = JSON.parse(stdout)
    assert.equal(machine.state, 'started')
    const deadline = Date.now() + 20_000
    let body = ''
    while (Date.now() < deadline) {
      try {
        const res = await fetch(`http://${state.proxy_addr}/`, { headers: { host: 'hello.hangar.local' } })
        body = await res.text()
        if (res.status === 200) break
      } catch { /* the proxy learns the route within a moment */ }
      await new Promise((r) => setTimeout(r, 100))
    }
    assert.equal(body, 'Hello from a Hangar Machine!\n')
  }

  const pids = dirs.flatMap((dir) => pidFiles(dir).map((f) => Number(readFileSync(f, 'utf8'))))
  for (const [i, dir] of dirs.entries()) {
    const { stdout } = await hangar(i, 'down', '--data-dir', dir, '--json')
    const result = JSON.parse(stdout)
    assert.equal(result.machinesStopped, 1)
  }
  for (const pid of pids) assert.equal(alive(pid), false, `process ${pid} was stopped`)
  for (const state of states) {
    const netns = existsSync('/var/run/netns') ? readdirSync('/var/run/netns') : []
    assert.ok(!netns.some((n) => n.startsWith('hangar-') && readFileSync('/proc/self/mountinfo', 'utf8').includes(state.data_dir)), 'no namespace or mount of this instance is left')
  }
  assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(root), 'no rootfs stays mounted')
})

test('hangar up in the foreground runs until interrupted, then takes everything down', { timeout: 120_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hangar-up-fg-'))
  const dir = join(root, 'data')
  const { spawn } = await import('node:child_process')
  const child = spawn(process.execPath, [CLI_MAIN, 'up', '--data-dir', dir], { env: { ...process.env, HANGAR_SKIP_SETUP: '1', HANGAR_CONFIG: join(root, 'config.json') } })
  let output = ''
  child.stderr.on('data', (chunk) => { output += chunk })
  // Whatever happens, nothing `up` started outlives the test.
  t.after(async () => {
    if (child.exitCode === null) child.kill('SIGKILL')
    await run(process.execPath, [CLI_MAIN, 'down', '--data-dir', dir], { env: { ...process.env, HANGAR_SKIP_SETUP: '1', HANGAR_CONFIG: join(root, 'config.json') } }).catch(() => undefined)
    rmSync(root, { recursive: true, force: true })
  })
  const deadline = Date.now() + 60_000
  while (!output.includes('Press Ctrl-C') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 50))
  assert.match(output, /Machines API\s+http:\/\/127\.0\.0\.1:\d+/)
  assert.match(output, /hangar machine run 127\.0\.0\.1:\d+\/hangar\/hello/, 'it prints a one-line example that runs a Machine')
  const pids = pidFiles(dir).map((f) => Number(readFileSync(f, 'utf8')))
  assert.ok(pids.length >= 5 && pids.every(alive))
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  child.kill('SIGINT')
  assert.equal(await exited, 0)
  for (const pid of pids) assert.equal(alive(pid), false, `process ${pid} was stopped by Ctrl-C`)
})

test('hangar up --hosts 3 --regions: a local cluster in network namespaces, one Machine per region, down removes it all', { timeout: 180_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hangar-up-cluster-'))
  const dir = join(root, 'data')
  const env = { ...process.env, HANGAR_SKIP_SETUP: '1', HANGAR_CONFIG: join(root, 'config.json'), HANGAR_API_URL: '', HANGAR_API_TOKEN: '' }
  const hangar = (...args: string[]) => run(process.execPath, [CLI_MAIN, ...args], { env, timeout: 120_000 })
  t.after(async () => { await hangar('down', '--data-dir', dir).catch(() => undefined); rmSync(root, { recursive: true, force: true }) })
  const { stdout } = await hangar('up', '--hosts', '3', '--regions', 'ams,sjc,fra', '--detach', '--json', '--data-dir', dir)
  const state = JSON.parse(stdout)
  assert.deepEqual(state.hosts.map((h: { region: string }) => h.region), ['ams', 'sjc', 'fra'])
  assert.equal(new Set(state.hosts.map((h: { addr: string }) => h.addr)).size, 3, 'each host has its own address')
  for (const host of state.hosts) {
    assert.match(host.id, /^[0-9a-f]{12}$/)
    assert.ok(alive(host.pid))
    assert.match(host.catalog_url, /^http:\/\/10\.\d+\.\d+\.\d+:\d+$/)
  }
  await hangar('apps', 'create', 'hello')
  const machines = []
  for (const region of ['ams', 'sjc', 'fra']) {
    const { stdout: out } = await hangar('machine', 'run', `${state.registry}/hangar/hello`, '-a', 'hello', '-r', region, '-p', '80:8080/tcp:http', '--json')
    const machine = JSON.parse(out)
    assert.equal(machine.region, region)
    assert.equal(machine.host_id, state.hosts.find((h: { region: string }) => h.region === region).id, 'placed on that region’s host')
    machines.push(machine)
  }
  // Every host's catalog learns all three Machines; any host's proxy answers for the app.
  for (const host of state.hosts) {
    const rows = await eventually(`the catalog of ${host.region}`, async () => {
      const res = await fetch(`${host.catalog_url}/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify('SELECT id FROM machines') })
      const lines = (await res.text()).split('\n').filter((l) => l.startsWith('{"row"'))
      return lines.length === 3 ? lines : undefined
    }, 20_000)
    assert.equal(rows.length, 3)
  }
  const body = await eventually('an answer through the sjc proxy', async () => {
    const res = await fetch(`http://${state.hosts[1].proxy_addr}/`, { headers: { host: 'hello.hangar.local' } })
    return res.status === 200 ? res.text() : undefined
  }, 20_000)
  assert.equal(body, 'Hello from a Hangar Machine!\n')
  // An app whose only Machine is in fra answers at the ams proxy: the edge sends it over the backhaul.
  await hangar('apps', 'create', 'far')
  await hangar('machine', 'run', `${state.registry}/hangar/hello`, '-a', 'far', '-r', 'fra', '-p', '80:8080/tcp:http', '--json')
  // (fetch() does not let a caller set Host: node:http does.)
  const far = await eventually('an answer from fra through the ams proxy', async () => {
    const res = await httpGet(state.hosts[0].proxy_addr, 'far.hangar.local')
    return res.status === 200 ? res : undefined
  }, 30_000)
  assert.equal(far.body, 'Hello from a Hangar Machine!\n')
  const netnsBefore = readdirSync('/var/run/netns').filter((n) => n.startsWith('hgu-'))
  assert.ok(netnsBefore.length >= 4, 'a hub and three host namespaces')
  const { stdout: downOut } = await hangar('down', '--data-dir', dir, '--json')
  assert.equal(JSON.parse(downOut).machinesStopped, 4)
  const left = readdirSync('/var/run/netns').filter((n) => netnsBefore.includes(n))
  assert.deepEqual(left, [], 'down removed the namespaces')
  for (const host of state.hosts) assert.equal(alive(host.pid), false)
  assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(root), 'no rootfs stays mounted')
})
