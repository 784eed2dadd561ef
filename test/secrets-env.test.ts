import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushBusyboxImage } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'
import { cliOk, runCli } from './kit/deploy-cli.js'
import type { Machine } from '../src/core/index.js'

// Secrets end to end (issue 5): set with the real CLI, they reach the guest's env (exec `env`)
// after the automatic roll, survive a restart by the restart policy and a kill -9 of the agent,
// `--stage` holds them back until the next start, unset removes them — and the values appear in
// no API response, no log, and neither store file in the clear.

const value = (label: string) => `${label}-${randomBytes(12).toString('hex')}`

test('secrets reach the guest env and nowhere else', { timeout: 180_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushBusyboxImage(registry, 'busybox:v1')
  platform = await startPlatform()
  const p = platform
  const responses: string[] = []
  const api = async (method: string, path: string, body?: unknown) => {
    const res = await p.fetch(path, { method, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
    const text = await res.text()
    responses.push(text)
    return { status: res.status, body: text ? JSON.parse(text) : undefined }
  }
  const cli = (args: string[], input?: string) => cliOk(args, { apiUrl: p.apiUrl, token: p.token, input })
  const env = async (machineId: string): Promise<Record<string, string>> => {
    const exec = await api('POST', `/v1/apps/vault/machines/${machineId}/exec`, { command: ['env'] })
    assert.equal(exec.status, 200, JSON.stringify(exec.body))
    return Object.fromEntries((exec.body.stdout as string).trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]))
  }
  const waitStarted = async (machineId: string, notVersion?: string): Promise<Machine> => {
    const deadline = Date.now() + 30_000
    for (;;) {
      const m = (await api('GET', `/v1/apps/vault/machines/${machineId}`)).body as Machine
      if (m.state === 'started' && m.instance_id !== notVersion) return m
      if (Date.now() > deadline) throw new Error(`machine ${machineId} is ${m.state}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  const apiKey = value('apikey')
  const dbPass = value('dbpass')
  const staged = value('staged')

  assert.equal((await api('POST', '/v1/apps', { app_name: 'vault', org_slug: 'personal' })).status, 201)
  const created = await api('POST', '/v1/apps/vault/machines', { config: { image: `${registry.host}/busybox:v1`, init: { cmd: ['sleep', '3600'] }, env: { PLAIN: 'visible' } } })
  assert.equal(created.status, 200)
  const machineId = created.body.id as string

  await t.test('`secrets set` stores them and rolls the Machine; the guest sees them as env', async () => {
    const out = JSON.parse(await cli(['secrets', 'set', '-a', 'vault', `API_KEY=${apiKey}`, `DB_PASS=${dbPass}`, '--json']))
    assert.equal(out.ok, true)
    assert.deepEqual(out.restarted, [machineId])
    const m = await waitStarted(machineId)
    assert.notEqual(m.instance_id, created.body.instance_id, 'the Machine was updated')
    const guest = await env(machineId)
    assert.equal(guest.API_KEY, apiKey)
    assert.equal(guest.DB_PASS, dbPass)
    assert.equal(guest.PLAIN, 'visible')
  })

  await t.test('listings show names and digests, never values; asking for values is refused', async () => {
    const listed = JSON.parse(await cli(['secrets', 'list', '-a', 'vault', '--json']))
    assert.deepEqual(listed.map((s: { name: string }) => s.name), ['API_KEY', 'DB_PASS'])
    assert.ok(listed.every((s: Record<string, string>) => /^[0-9a-f]{16}$/.test(s.digest) && s.created_at && !('value' in s)))
    const shown = await api('GET', '/v1/apps/vault/secrets?show_secrets=true')
    assert.equal(shown.status, 403)
    assert.match(shown.body.error, /never returns secret values/)
    const bad = await runCli(['secrets', 'set', '-a', 'vault', `1BAD=${apiKey}`], { apiUrl: p.apiUrl, token: p.token })
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /secret name "1BAD" must be an environment variable name/)
    assert.equal(bad.stderr.includes(apiKey), false, 'an error never echoes a value')
  })

  await t.test('a restart by the restart policy keeps them', async () => {
    const before = (await api('GET', `/v1/apps/vault/machines/${machineId}/events?limit=50`)).body.filter((e: { type: string }) => e.type === 'exit').length
    assert.equal((await api('POST', `/v1/apps/vault/machines/${machineId}/signal`, { signal: 'SIGKILL' })).status, 200)
    const deadline = Date.now() + 20_000
    while ((await api('GET', `/v1/apps/vault/machines/${machineId}/events?limit=50`)).body.filter((e: { type: string }) => e.type === 'exit').length === before) {
      if (Date.now() > deadline) throw new Error('no exit recorded')
      await new Promise((r) => setTimeout(r, 50))
    }
    await waitStarted(machineId)
    assert.equal((await env(machineId)).API_KEY, apiKey)
  })

  await t.test('after a kill -9 of the agent, Machines it restarts still get them', async () => {
    const pid = p.agentPid()!
    process.kill(pid, 'SIGKILL')
    await p.waitForAgent(pid)
    assert.equal((await api('POST', `/v1/apps/vault/machines/${machineId}/restart`)).status, 200)
    await waitStarted(machineId)
    const guest = await env(machineId)
    assert.equal(guest.API_KEY, apiKey)
    assert.equal(guest.DB_PASS, dbPass)
  })

  await t.test('--stage holds a secret back until the next start; unset removes one', async () => {
    const version = (await api('GET', `/v1/apps/vault/machines/${machineId}`)).body.instance_id
    const out = JSON.parse(await cli(['secrets', 'import', '-a', 'vault', '--stage', '--json'], `# from a file\nSTAGED=${staged}\n`))
    assert.deepEqual([out.staged, out.restarted], [true, []])
    assert.equal((await api('GET', `/v1/apps/vault/machines/${machineId}`)).body.instance_id, version, 'not rolled')
    assert.equal((await env(machineId)).STAGED, undefined)
    await cli(['machine', 'stop', machineId, '-a', 'vault'])
    await cli(['machine', 'start', machineId, '-a', 'vault'])
    assert.equal((await env(machineId)).STAGED, staged)
    await cli(['secrets', 'unset', '-a', 'vault', 'DB_PASS'])
    await waitStarted(machineId)
    const guest = await env(machineId)
    assert.equal(guest.DB_PASS, undefined)
    assert.equal(guest.API_KEY, apiKey)
  })

  await t.test('no value in any API response, log, or store file', async () => {
    for (const path of ['/v1/apps/vault/machines', `/v1/apps/vault/machines/${machineId}`, `/v1/apps/vault/machines/${machineId}/events?limit=50`,
      `/v1/apps/vault/machines/${machineId}/versions`, `/v1/apps/vault/machines/${machineId}/metadata`, '/v1/apps/vault/secrets', '/v1/apps/vault/secrets/API_KEY', '/v1/apps/vault']) {
      assert.equal((await api('GET', path)).status, 200, path)
    }
    const secrets = [apiKey, dbPass, staged]
    const exposedIn = (text: string) => secrets.filter((s) => text.includes(s))
    const nonExec = responses.filter((r) => !r.includes('"stdout"'))
    for (const response of nonExec) assert.deepEqual(exposedIn(response), [], response.slice(0, 300))
    const files: string[] = []
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name)
        const stat = statSync(path)
        // The machines pool (its image and its mountpoint) holds what guests write: config.files
        // put secrets there on purpose.
        if (stat.isDirectory()) { if (name !== 'machines' && name !== 'images' && name !== 'runtime') walk(path) } else if (name !== 'machines.img') files.push(path)
      }
    }
    walk(p.hostDir)
    const apiDb = p.api.store.db.name
    for (const path of [apiDb, `${apiDb}-wal`]) if (existsSync(path)) files.push(path)
    assert.ok(files.some((f) => f.endsWith('agent.db')) && files.some((f) => f.endsWith('agent.log')), files.join(', '))
    for (const file of files) assert.deepEqual(exposedIn(readFileSync(file).toString('latin1')), [], file)
    assert.equal(statSync(join(p.hostDir, 'secrets.key')).mode & 0o777, 0o600)
  })
})
