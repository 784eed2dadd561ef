// Test kit: a real registry (Debian's `docker-registry`, distribution 2.8) on 127.0.0.1 with its
// own temp storage, in one of three auth modes:
//   - 'none'  : anonymous pull and push;
//   - 'basic' : distribution's `auth: htpasswd` (bcrypt file made with `htpasswd -Bbn`);
//   - 'token' : distribution's `auth: token` (docs/spec/auth/token.md, jwt.md). The kit runs a token
//     server in this process on loopback; it issues ES256 JWTs whose `x5c` header carries a
//     self-signed certificate, and that certificate is the registry's `rootcertbundle`.
// Also a counting relay (a plain HTTP proxy in front of the registry) so tests can see exactly
// which requests reached the registry.
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { createPrivateKey, randomBytes, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto'
import { createServer, request as httpRequest, Agent as HttpAgent, type Server, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../../src/core/index.js'

export type RegistryAuthMode = 'none' | 'basic' | 'token'

export interface StartRegistryOptions {
  auth?: RegistryAuthMode
  /** The one user of 'basic' and 'token' modes (default 'hangar' with a random password). */
  username?: string
  password?: string
  /** 'token' mode: anonymous callers get pull tokens (like a public Docker Hub repository).
   * Default false: anonymous callers get a token with no access. */
  anonymousPull?: boolean
}

export interface TestRegistry {
  /** 'http://127.0.0.1:<port>' */
  url: string
  /** '127.0.0.1:<port>' — the registry part of image references. */
  host: string
  auth: RegistryAuthMode
  /** The user of 'basic'/'token' modes. */
  credentials?: { username: string; password: string }
  /** The registry's storage root (filesystem driver). */
  storageDir: string
  /** 'token' mode: the token server's URL and how many tokens it has been asked for. */
  tokenServer?: { url: string; requests: number }
  /** An Authorization header value that may push to (and pull from) `repository`. */
  pushAuthorization(repository: string): Promise<string | undefined>
  /** Where the registry keeps a blob's bytes (for tests that tamper with storage). */
  blobDataPath(digest: string): string
  stop(): Promise<void>
}

const TOKEN_SERVICE = 'hangar-test-registry'
const TOKEN_ISSUER = 'hangar-test-token-issuer'

export async function startRegistry(options: StartRegistryOptions = {}): Promise<TestRegistry> {
  const auth = options.auth ?? 'none'
  const dir = await mkdtemp(join(tmpdir(), 'hangar-registry-'))
  const cleanups: Array<() => Promise<void>> = [() => rm(dir, { recursive: true, force: true })]
  const cleanup = async () => { for (const c of cleanups.reverse()) await c().catch(() => {}) }
  try {
    const credentials = auth === 'none' ? undefined : { username: options.username ?? 'hangar', password: options.password ?? randomBytes(12).toString('hex') }
    let authConfig = ''
    let signer: TokenSigner | undefined
    let tokenServer: { url: string; requests: number } | undefined
    if (auth === 'basic') {
      const line = await exec('htpasswd', ['-Bbn', credentials!.username, credentials!.password])
      await writeFile(join(dir, 'htpasswd'), line.trim() + '\n')
      authConfig = `auth:\n  htpasswd:\n    realm: hangar-test\n    path: ${join(dir, 'htpasswd')}\n`
    } else if (auth === 'token') {
      await exec('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', join(dir, 'token-key.pem'), '-out', join(dir, 'token-cert.pem'), '-subj', '/CN=hangar-test-token', '-days', '2'])
      signer = new TokenSigner(createPrivateKey(await readFile(join(dir, 'token-key.pem'))), new X509Certificate(await readFile(join(dir, 'token-cert.pem'))))
      const started = await startTokenServer(signer, credentials!, options.anonymousPull ?? false)
      cleanups.push(started.close)
      tokenServer = started.stats
      authConfig = `auth:\n  token:\n    realm: ${started.stats.url}\n    service: ${TOKEN_SERVICE}\n    issuer: ${TOKEN_ISSUER}\n    rootcertbundle: ${join(dir, 'token-cert.pem')}\n`
    }

    const storageDir = join(dir, 'storage')
    const { process: child, port } = await launchRegistry(dir, storageDir, authConfig)
    cleanups.push(() => stopProcess(child))
    const host = `127.0.0.1:${port}`

    let stopped: Promise<void> | undefined
    const registry: TestRegistry = {
      url: `http://${host}`,
      host,
      auth,
      storageDir,
      async pushAuthorization(repository: string) {
        if (auth === 'basic') return `Basic ${Buffer.from(`${credentials!.username}:${credentials!.password}`).toString('base64')}`
        if (auth === 'token') return `Bearer ${signer!.issue(credentials!.username, [{ type: 'repository', name: repository, actions: ['pull', 'push'] }])}`
        return undefined
      },
      blobDataPath(digest: string) {
        const [algorithm, hex] = digest.split(':') as [string, string]
        return join(storageDir, 'docker/registry/v2/blobs', algorithm, hex.slice(0, 2), hex, 'data')
      },
      stop() {
        stopped ??= cleanup()
        return stopped
      },
    }
    if (credentials) registry.credentials = credentials
    if (tokenServer) registry.tokenServer = tokenServer
    return registry
  } catch (err) {
    await cleanup()
    throw err
  }
}

async function launchRegistry(dir: string, storageDir: string, authConfig: string): Promise<{ process: ChildProcess; port: number }> {
  let lastError: unknown
  // A port picked free can be taken before the registry binds it; try a few.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort()
    const config = [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storageDir}`,
      '  delete:',
      '    enabled: true',
      '  maintenance:',
      '    uploadpurging:',
      '      enabled: false',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      `  secret: ${randomBytes(16).toString('hex')}`,
      authConfig,
    ].join('\n')
    const configPath = join(dir, 'config.yml')
    await writeFile(configPath, config)
    // setpriv --pdeathsig: the registry dies with the test process even when that is killed
    // (a test timeout, kill -9) and never runs on as an orphan.
    const child = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', 'docker-registry', 'serve', configPath], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 8192) stderr += d })
    try {
      await waitForRegistry(`http://127.0.0.1:${port}/v2/`, child, () => stderr)
      return { process: child, port }
    } catch (err) {
      lastError = err
      await stopProcess(child)
    }
  }
  throw lastError
}

async function waitForRegistry(url: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 15_000
  let exited = false
  child.once('exit', () => { exited = true })
  while (Date.now() < deadline) {
    if (exited) throw new Error(`docker-registry exited before answering: ${stderr().slice(-2000)}`)
    try {
      const res = await fetch(url)
      await res.arrayBuffer()
      if (res.status === 200 || res.status === 401) return
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 10))
  }
  throw new Error(`docker-registry did not answer ${url} within 15 s: ${stderr().slice(-2000)}`)
}

function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
    child.once('exit', () => { clearTimeout(timer); resolve() })
    child.kill('SIGTERM')
  })
}

/** A free loopback port (the core helper, re-exported for the kit's users). */
export { freePort }

function exec(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, (err, stdout, stderr) => (err ? reject(new Error(`${command} failed: ${stderr || err.message}`)) : resolve(stdout)))
  })
}

// ---- token server ----

interface Access {
  type: string
  name: string
  actions: string[]
}

class TokenSigner {
  constructor(private readonly key: KeyObject, private readonly cert: X509Certificate) {}

  issue(subject: string, access: Access[], lifetimeSeconds = 300): string {
    const now = Math.floor(Date.now() / 1000)
    const header = { typ: 'JWT', alg: 'ES256', x5c: [this.cert.raw.toString('base64')] }
    const claims = { iss: TOKEN_ISSUER, sub: subject, aud: TOKEN_SERVICE, exp: now + lifetimeSeconds, nbf: now - 30, iat: now, jti: randomUUID(), access }
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`
    // JWS ES256 signatures are r||s (RFC 7518 §3.4), not DER.
    const signature = sign('sha256', Buffer.from(input), { key: this.key, dsaEncoding: 'ieee-p1363' })
    return `${input}.${b64url(signature)}`
  }
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url')
}

/** Parses `scope=repository:name:pull,push` (one per query parameter). */
function parseScopes(values: string[]): Access[] {
  const out: Access[] = []
  for (const value of values) {
    for (const scope of value.split(' ')) {
      const parts = scope.split(':')
      if (parts.length < 3) continue
      const actions = parts.pop()!.split(',').filter(Boolean)
      const type = parts.shift()!
      out.push({ type, name: parts.join(':'), actions })
    }
  }
  return out
}

async function startTokenServer(signer: TokenSigner, credentials: { username: string; password: string }, anonymousPull: boolean): Promise<{ stats: { url: string; requests: number }; close: () => Promise<void> }> {
  const stats = { url: '', requests: 0 }
  const server: Server = createServer((req, res) => {
    stats.requests++
    const url = new URL(req.url ?? '/', 'http://localhost')
    if (url.pathname !== '/token') { res.writeHead(404).end(); return }
    const header = req.headers.authorization
    let subject = ''
    if (header) {
      const decoded = header.startsWith('Basic ') ? Buffer.from(header.slice(6), 'base64').toString('utf8') : ''
      const colon = decoded.indexOf(':')
      if (colon < 0 || decoded.slice(0, colon) !== credentials.username || decoded.slice(colon + 1) !== credentials.password) {
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Basic realm="hangar-test-token"' })
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'invalid username or password' }] }))
        return
      }
      subject = credentials.username
    }
    // docs/spec/auth/token.md: grant the intersection of what was asked and what is allowed; an
    // anonymous caller without rights gets a token with no access rather than an error.
    const requested = parseScopes(url.searchParams.getAll('scope'))
    const granted = requested
      .filter((a) => a.type === 'repository')
      .map((a) => ({ ...a, actions: a.actions.filter((action) => (subject !== '' ? action === 'pull' || action === 'push' : anonymousPull && action === 'pull')) }))
      .filter((a) => a.actions.length > 0)
    const token = signer.issue(subject, granted)
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() }))
  })
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve) })
  stats.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`
  return {
    stats,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }),
  }
}

// ---- counting relay ----

export interface RelayedRequest {
  method: string
  path: string
  status: number
}

export interface CountingRelay {
  url: string
  /** Requests as they arrive (before any answer), as 'METHOD /path'. */
  arrived: string[]
  /** '127.0.0.1:<port>' — use as the registry part of references to go through the relay. */
  host: string
  requests: RelayedRequest[]
  /** How many requests matched `method` and a path test. */
  count(method: string, path: RegExp | string): number
  stop(): Promise<void>
}

export interface CountingRelayOptions {
  /** Hold back the answer to requests whose path matches until `release()` is called. */
  holdPaths?: RegExp
}

/** A transparent HTTP relay in front of `targetUrl` that records every request (method, path, status). */
export async function startCountingRelay(targetUrl: string, options: CountingRelayOptions = {}): Promise<CountingRelay & { release(): void }> {
  const target = new URL(targetUrl)
  const agent = new HttpAgent({ keepAlive: true })
  const requests: RelayedRequest[] = []
  const arrived: string[] = []
  let held: Array<() => void> = []
  let releasedAll = false
  const server = createServer((req, res) => {
    arrived.push(`${req.method} ${req.url}`)
    if (options.holdPaths?.test(req.url ?? '') && !releasedAll) {
      held.push(() => forward(req, res))
      return
    }
    forward(req, res)
  })
  const forward = (req: IncomingMessage, res: ServerResponse) => {
    const upstream = httpRequest({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent }, (up: IncomingMessage) => {
      requests.push({ method: req.method ?? '', path: req.url ?? '', status: up.statusCode ?? 0 })
      res.writeHead(up.statusCode ?? 502, up.headers)
      up.pipe(res)
    })
    upstream.on('error', () => { if (!res.headersSent) res.writeHead(502); res.end() })
    req.pipe(upstream)
  }
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve) })
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`
  let stopped: Promise<void> | undefined
  return {
    url: `http://${host}`,
    host,
    requests,
    arrived,
    release() {
      releasedAll = true
      const waiting = held
      held = []
      for (const go of waiting) go()
    },
    count(method: string, path: RegExp | string) {
      return requests.filter((r) => r.method === method && (typeof path === 'string' ? r.path === path : path.test(r.path))).length
    },
    stop() {
      stopped ??= new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => { agent.destroy(); resolve() }) })
      return stopped
    },
  }
}
