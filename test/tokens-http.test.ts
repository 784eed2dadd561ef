import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { startNatsServer, type NatsServer } from '../src/bus/index.js'
import { AuthStore } from '../src/api/index.js'
import { attenuate, scopeCaveats } from '../src/auth/index.js'
import { freePort } from './kit/platform.js'
import { cliOk, HANGAR_CLI, lastLine, runCli } from './kit/deploy-cli.js'

// Tokens end to end through real HTTP: two `hangar api` processes sharing one data dir and one
// NATS server, the bootstrap org token `hangar up` hands out, tokens made and narrowed with the
// real CLI, scopes checked by every kind of request, and a revocation made on one API node
// refused at once by the other.

interface ApiProcess { url: string; child: ChildProcess; log: string }

async function startApiProcess(root: string, name: string, natsUrl: string, extra: string[] = []): Promise<ApiProcess> {
  const port = await freePort()
  const log = join(root, `${name}.log`)
  const fd = openSync(log, 'a')
  const child = spawn(process.execPath, [HANGAR_CLI, 'api', '--data-dir', join(root, 'api'), '--nats', natsUrl, '--port', String(port), '--region', 'tst', ...extra], { stdio: ['ignore', fd, fd], env: { ...process.env, HANGAR_SKIP_SETUP: '1' } })
  closeSync(fd)
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      const res = await fetch(`${url}/v1/apps`)
      if (res.status === 401) break
    } catch { /* not listening yet */ }
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${name} did not start: ${readFileSync(log, 'utf8')}`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return { url, child, log }
}

async function stop(proc: ApiProcess | undefined): Promise<void> {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => proc.child.once('exit', () => resolve()))
  proc.child.kill('SIGTERM')
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), 5000)
  await exited
  clearTimeout(timer)
}

async function call(url: string, path: string, authorization: string | undefined, method = 'GET', body?: unknown) {
  const res = await fetch(url + path, {
    method,
    headers: { ...(authorization ? { authorization } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : undefined }
}

test('tokens over real HTTP: kinds, attenuation, expiry, tampering, other orgs, and revocation on every API node', { timeout: 90_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'hangar-tokens-'))
  let nats: NatsServer | undefined
  let apiA: ApiProcess | undefined
  let apiB: ApiProcess | undefined
  t.after(async () => {
    await stop(apiA)
    await stop(apiB)
    await nats?.stop()
    rmSync(root, { recursive: true, force: true })
  })
  nats = await startNatsServer({ dataDir: join(root, 'nats'), port: await freePort() })
  const tokenFile = join(root, 'token')
  apiA = await startApiProcess(root, 'api-a', nats.url, ['--bootstrap-org', 'personal', '--token-file', tokenFile])
  apiB = await startApiProcess(root, 'api-b', nats.url)
  const A = apiA.url
  const B = apiB.url

  // `hangar up`'s bootstrap: an fm2_ org token in a 0600 file; the master key is 0600 too.
  const orgToken = readFileSync(tokenFile, 'utf8').trim()
  assert.match(orgToken, /^fm2_/)
  assert.equal(statSync(tokenFile).mode & 0o777, 0o600)
  assert.equal(statSync(join(root, 'api', 'master.key')).mode & 0o777, 0o600)
  const cli = (args: string[], token = orgToken, input?: string, url = A) => cliOk(args, { apiUrl: url, token, input })

  await t.test('the org token works on both nodes, as FlyV1 or Bearer; no token, a wrong scheme or junk is 401', async () => {
    for (const url of [A, B]) {
      assert.equal((await call(url, '/v1/apps', `FlyV1 ${orgToken}`)).status, 200)
      assert.equal((await call(url, '/v1/apps', `Bearer ${orgToken}`)).status, 200)
    }
    const missing = await call(B, '/v1/apps', undefined)
    assert.equal(missing.status, 401)
    assert.match(missing.body.error, /a token is required/)
    assert.match((await call(B, '/v1/apps', `Basic ${orgToken}`)).body.error, /scheme "Basic" is not supported/)
    assert.match((await call(B, '/v1/apps', 'Bearer hgt_static')).body.error, /must start with fm2_/)
  })

  let deploy!: { token: string; id: string; app_name: string }
  let readonly!: string
  await t.test('kinds: deploy is one app, readonly reads, no token mints a wider one', async () => {
    for (const app of ['web', 'api']) assert.equal((await call(A, '/v1/apps', `FlyV1 ${orgToken}`, 'POST', { app_name: app, org_slug: 'personal' })).status, 201)
    deploy = JSON.parse(await cli(['tokens', 'create', 'deploy', '--app', 'web', '--json']))
    assert.match(deploy.token, /^fm2_/)
    assert.equal(deploy.app_name, 'web')
    const header = `FlyV1 ${deploy.token}`
    assert.equal((await call(B, '/v1/apps/web', header)).status, 200)
    const otherApp = await call(B, '/v1/apps/api', header)
    assert.equal(otherApp.status, 403)
    assert.match(otherApp.body.error, /not valid for app api/)
    assert.deepEqual((await call(B, '/v1/apps', header)).body.apps.map((a: { name: string }) => a.name), ['web'], 'an app token lists its app only')
    const create = await call(B, '/v1/apps', header, 'POST', { app_name: 'sneaky', org_slug: 'personal' })
    assert.equal(create.status, 403)
    const escalate = await runCli(['tokens', 'create', 'org', '--json'], { apiUrl: B, token: deploy.token })
    assert.equal(escalate.code, 1)
    assert.match(escalate.stderr, /allows only r outside the resources it names/)
    const sibling = await runCli(['tokens', 'create', 'deploy', '--app', 'api'], { apiUrl: B, token: deploy.token })
    assert.match(sibling.stderr, /not valid for app api/)

    readonly = lastLine(await cli(['tokens', 'create', 'readonly']))
    assert.equal((await call(B, '/v1/apps/api', `FlyV1 ${readonly}`)).status, 200)
    const write = await call(B, '/v1/apps', `FlyV1 ${readonly}`, 'POST', { app_name: 'x', org_slug: 'personal' })
    assert.equal(write.status, 403)
    assert.match(write.body.error, /does not allow c/)
    assert.equal((await call(B, '/v1/apps/api/secrets', `FlyV1 ${readonly}`, 'POST', { values: { A: '1' } })).status, 403)
    assert.equal((await call(B, '/v1/apps/api', `FlyV1 ${readonly}`, 'DELETE')).status, 403)
  })

  await t.test('attenuated locally with the CLI: narrower, never wider', async () => {
    const narrow = lastLine(await cli(['tokens', 'attenuate', '--app', 'web', '--machine', 'abcdef01234567', '--actions', 'r', '--expiry', '1h'], orgToken, deploy.token))
    assert.notEqual(narrow, deploy.token)
    const h = `FlyV1 ${narrow}`
    assert.equal((await call(B, '/v1/apps/web/machines/abcdef01234567', h)).status, 404, 'allowed through auth; the Machine does not exist')
    const other = await call(B, '/v1/apps/web/machines/0123456789abcd', h)
    assert.equal(other.status, 403)
    assert.match(other.body.error, /not valid for machine 0123456789abcd/)
    const stop = await call(B, '/v1/apps/web/machines/abcdef01234567/stop', h, 'POST')
    assert.equal(stop.status, 403)
    assert.match(stop.body.error, /does not allow C/)
    assert.equal((await call(B, '/v1/apps/api', h)).status, 403)
    // Attenuation cannot widen: attenuating the narrow token to "*" on another app still fails.
    const widened = lastLine(await cli(['tokens', 'attenuate', '--app', 'api', '--actions', '*'], orgToken, narrow))
    assert.equal((await call(B, '/v1/apps/api', `FlyV1 ${widened}`)).status, 403)
    // Comma-joined: a request passes when any token allows it.
    assert.equal((await call(B, '/v1/apps/api', `FlyV1 ${narrow},${readonly}`)).status, 200)
  })

  await t.test('expired and tampered tokens are 401 with a clear message', async () => {
    const short = attenuate(deploy.token, scopeCaveats({ expiry: '1s' }))
    assert.equal((await call(B, '/v1/apps/web', `FlyV1 ${short}`)).status, 200)
    const deadline = Date.now() + 5000
    let expired = await call(B, '/v1/apps/web', `FlyV1 ${short}`)
    while (expired.status === 200 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100))
      expired = await call(B, '/v1/apps/web', `FlyV1 ${short}`)
    }
    assert.equal(expired.status, 401)
    assert.match(expired.body.error, /the token expired at/)
    const bytes = Buffer.from(deploy.token.slice(4), 'base64')
    for (const index of [bytes.length - 1, Math.floor(bytes.length / 2), 30]) {
      const copy = Buffer.from(bytes)
      copy[index] = copy[index]! ^ 0x01
      const tampered = await call(B, '/v1/apps/web', `FlyV1 fm2_${copy.toString('base64')}`)
      assert.equal(tampered.status, 401, `byte ${index}`)
      assert.match(tampered.body.error, /does not verify|malformed|does not know/)
    }
  })

  await t.test('another org: every request for this org’s app is a 404, like an app that does not exist', async () => {
    const acme = JSON.parse(await cli(['orgs', 'create', 'acme', '--json']))
    assert.match(acme.token, /^fm2_/)
    const h = `FlyV1 ${acme.token}`
    for (const url of [A, B]) {
      const hidden = await call(url, '/v1/apps/web', h)
      const absent = await call(url, '/v1/apps/no-such-app', h)
      assert.deepEqual(hidden, { status: 404, body: { ...absent.body, error: 'app web not found' } }, 'the same answer as for an app that does not exist')
      assert.deepEqual((await call(url, '/v1/apps', h)).body.apps, [])
      assert.equal((await call(url, '/v1/apps?org_slug=personal', h)).body.total_apps, 0)
    }
    const orgs = JSON.parse(await cli(['orgs', 'list', '--json'], `${orgToken},${acme.token}`))
    assert.deepEqual(orgs.map((o: { slug: string }) => o.slug), ['acme', 'personal'], 'comma-joined tokens reach both orgs')
    assert.deepEqual(JSON.parse(await cli(['orgs', 'list', '--json'], acme.token)).map((o: { slug: string }) => o.slug), ['acme'])
  })

  await t.test('revoking on node A is refused on node B at once, for the token and everything attenuated from it', async () => {
    const narrow = attenuate(deploy.token, scopeCaveats({ appId: 'web', actions: 'r' }))
    assert.equal((await call(B, '/v1/apps/web', `FlyV1 ${narrow}`)).status, 200)
    const revoked = JSON.parse(await cli(['tokens', 'revoke', deploy.id, '--json']))
    assert.equal(revoked.revoked, deploy.id)
    assert.equal(revoked.nodes.length, 2, 'both API nodes confirmed')
    for (const token of [deploy.token, narrow]) {
      const res = await call(B, '/v1/apps/web', `FlyV1 ${token}`)
      assert.equal(res.status, 401)
      assert.match(res.body.error, new RegExp(`the token ${deploy.id} has been revoked`))
    }
    assert.equal((await call(B, '/v1/apps/web', `FlyV1 ${orgToken}`)).status, 200, 'other tokens are unaffected')
    // The holder of a token may revoke it by handing it in on stdin.
    const spare = lastLine(await cli(['tokens', 'create', 'readonly']))
    const byToken = JSON.parse(await cli(['tokens', 'revoke', '-', '--json'], orgToken, spare, B))
    assert.equal(byToken.nodes.length, 2)
    assert.equal((await call(A, '/v1/apps', `FlyV1 ${spare}`)).status, 401)
    const listed = JSON.parse(await cli(['tokens', 'list', '--json']))
    assert.equal(listed.find((x: { id: string }) => x.id === deploy.id).revoked, true)
    assert.ok(!JSON.stringify(listed).includes('fm2_'), 'listings never carry tokens')
  })

  await t.test('keys at rest are sealed; no token reaches a log', async () => {
    const masterKey = readFileSync(join(root, 'api', 'master.key'))
    const db = new Database(join(root, 'api', 'api.db'))
    try {
      const key = new AuthStore(db, masterKey).currentKey('personal')!
      for (const file of ['api.db', 'api.db-wal']) {
        const path = join(root, 'api', file)
        if (existsSync(path)) assert.equal(readFileSync(path).includes(Buffer.from(key.secret)), false, `${file} holds the signing key in the clear`)
      }
    } finally {
      db.close()
    }
    await stop(apiA)
    await stop(apiB)
    for (const log of [apiA!.log, apiB!.log]) {
      const text = readFileSync(log, 'utf8')
      assert.ok(text.length > 0)
      assert.equal(/fm2_/.test(text), false, `${log} mentions a token`)
    }
  })
})
