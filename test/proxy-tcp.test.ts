import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { chmod, chown, mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises'
import http2 from 'node:http2'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import tls from 'node:tls'
import { promisify } from 'node:util'
import { X509Certificate } from 'node:crypto'
import { Agent, request } from 'undici'
import { createLogger, silentLogger, type MachineService } from '../src/core/index.js'
import { startProxy, type RunningProxy } from '../src/proxy/index.js'
import { freePort, loopbackAddress, machineRoute, proxyHarness, waitFor, type ProxyHarness } from './kit/backends.js'

// TLS, pg_tls, PROXY protocol and raw TCP through `hangar proxy`, with real clients: node:tls,
// `openssl s_client`, node:http2 over TLS (ALPN h2), undici over TLS, `psql sslmode=require`
// against a real Postgres, and raw sockets reading the PROXY header.

const run = promisify(execFile)
const domain = 'apps.test'

function tcpService(port: number, handlers: string[], extra: Record<string, unknown> = {}, internalPort = 8080): MachineService {
  return { internal_port: internalPort, protocol: 'tcp', ports: [{ port, handlers, ...extra }] }
}

async function exchange(socket: net.Socket, send: string | Buffer, until: (text: string) => boolean): Promise<string> {
  let out = ''
  socket.on('data', (d: Buffer) => { out += d.toString('latin1') })
  socket.write(send)
  const deadline = Date.now() + 5000
  while (!until(out)) {
    if (Date.now() > deadline || socket.destroyed) throw new Error(`no answer; got ${JSON.stringify(out)}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return out
}

describe('proxy: TLS, pg_tls, PROXY protocol, raw TCP', () => {
  let harness: ProxyHarness
  let proxy: RunningProxy
  const ports = { https: 0, tlsRaw: 0, raw: 0, ppv1: 0, ppv2: 0, pg: 0 }
  let pgDir = ''
  let pgPort = 0
  let pgStarted = false

  before(async () => {
    harness = await proxyHarness()
    for (const key of Object.keys(ports) as Array<keyof typeof ports>) ports[key] = await freePort()
    const webService = tcpService(ports.https, ['tls', 'http'])
    await harness.machine(machineRoute({ machineId: 'web1', app: 'web', address: loopbackAddress(), services: [webService] }))
    await harness.machine(machineRoute({ machineId: 'other1', app: 'other', address: loopbackAddress(), services: [webService] }))
    await harness.machine(machineRoute({ machineId: 'echo1', app: 'echo', address: loopbackAddress(), services: [tcpService(ports.tlsRaw, ['tls']), tcpService(ports.raw, [])] }), 'echo')
    // A second app on the tls-only port: SNI alone tells them apart.
    await harness.machine(machineRoute({ machineId: 'tlsweb1', app: 'tlsweb', address: loopbackAddress(), services: [tcpService(ports.tlsRaw, ['tls'])] }))
    await harness.machine(machineRoute({ machineId: 'pp1', app: 'pp', address: loopbackAddress(), services: [tcpService(ports.ppv1, ['proxy_proto']), tcpService(ports.ppv2, ['tls', 'proxy_proto'], { proxy_proto_options: { version: 'v2' } })] }), 'proxyproto')
    harness.source.setApp({ app: 'other', org: 'test-org', hostnames: ['shop.example.com', 'custom.example.com'] })
    // An operator-provided certificate for one custom hostname wins over an issued one.
    await mkdir(join(harness.caDir, 'certs'), { recursive: true })

    // A real Postgres (Debian postgresql), as the postgres user, on a free loopback port.
    pgPort = await freePort()
    pgDir = await mkdtemp(join(tmpdir(), 'hangar-proxy-pg-'))
    await chmod(pgDir, 0o755)
    const { stdout: uid } = await run('id', ['-u', 'postgres'])
    const { stdout: gid } = await run('id', ['-g', 'postgres'])
    await chown(pgDir, Number(uid), Number(gid))
    const asPostgres = (cmd: string) => run('su', ['postgres', '-s', '/bin/sh', '-c', cmd], { timeout: 60_000 })
    await asPostgres(`initdb -D ${pgDir}/data -A trust -U postgres --no-sync >/dev/null`)
    await asPostgres(`pg_ctl -D ${pgDir}/data -w -l ${pgDir}/log -o "-p ${pgPort} -k ${pgDir} -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null`)
    pgStarted = true
    harness.source.upsert(machineRoute({ machineId: 'pg1', app: 'pg', address: '127.0.0.1', services: [tcpService(ports.pg, ['pg_tls'], {}, pgPort)] }))

    proxy = await startProxy({
      routeSource: harness.source, region: 'ams', hostId: 'host-a', domain, caDir: harness.caDir,
      listenHost: '127.0.0.1', logger: process.env.HANGAR_TEST_LOG ? createLogger('proxy') : silentLogger,
    })
  })

  after(async () => {
    await proxy?.close()
    if (pgStarted) await run('su', ['postgres', '-s', '/bin/sh', '-c', `pg_ctl -D ${pgDir}/data -m immediate stop`]).catch(() => undefined)
    if (pgDir) await rm(pgDir, { recursive: true, force: true })
    await harness?.close()
  })

  function connectTls(port: number, servername: string, options: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: proxy.caCertPem, ...options }, () => resolve(socket))
      socket.once('error', reject)
    })
  }

  it('terminates TLS 1.3 and 1.2 with a certificate the Hangar CA issued for <app>.<domain>, chosen by SNI', async () => {
    const socket = await connectTls(ports.https, `web.${domain}`)
    try {
      assert.equal(socket.authorized, true)
      assert.equal(socket.getProtocol(), 'TLSv1.3')
      const cert = new X509Certificate(socket.getPeerX509Certificate()!.raw)
      assert.match(cert.subjectAltName ?? '', /DNS:web\.apps\.test/)
    } finally { socket.destroy() }
    const tls12 = await connectTls(ports.https, `shop.example.com`, { maxVersion: 'TLSv1.2' })
    try {
      assert.equal(tls12.getProtocol(), 'TLSv1.2')
      assert.match(tls12.getPeerX509Certificate()!.subjectAltName ?? '', /DNS:shop\.example\.com/, 'custom hostnames get their own certificate')
    } finally { tls12.destroy() }
    await assert.rejects(connectTls(ports.https, 'unknown.example.org'), 'no certificate for a name no app serves')
  })

  it('openssl s_client verifies the chain for the SNI name', async () => {
    const caFile = join(harness.caDir, 'test-ca.pem')
    await writeFile(caFile, proxy.caCertPem)
    const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${ports.https}`, '-servername', `web.${domain}`, '-verify_hostname', `web.${domain}`, '-CAfile', caFile, '-brief', '-ign_eof'], { stdio: ['pipe', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (d: Buffer) => { output += d.toString() })
    child.stderr.on('data', (d: Buffer) => { output += d.toString() })
    child.stdin.end(`GET / HTTP/1.1\r\nHost: web.${domain}\r\nConnection: close\r\n\r\n`)
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
    assert.equal(code, 0, output)
    assert.match(output, /Verification: OK/)
    assert.match(output, /"machine":"web1"/)
  })

  it('HTTP over TLS: ALPN h2 with node:http2 and http/1.1 with undici; X-Forwarded-Proto https', async () => {
    const session = http2.connect(`https://127.0.0.1:${ports.https}`, { ca: proxy.caCertPem, servername: `web.${domain}` })
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const stream = session.request({ ':path': '/h2', ':authority': `web.${domain}` })
        let data = ''
        stream.on('data', (d: Buffer) => { data += d.toString() })
        stream.on('end', () => resolve(data))
        stream.on('error', reject)
        stream.end()
      })
      const answer = JSON.parse(body) as { machine: string; headers: Record<string, string> }
      assert.equal(answer.machine, 'web1')
      assert.equal(answer.headers['x-forwarded-proto'], 'https')
      assert.equal(answer.headers['x-forwarded-ssl'], 'on')
      assert.equal(session.alpnProtocol, 'h2')
    } finally { session.close() }
    const agent = new Agent({ connect: { ca: proxy.caCertPem, servername: 'shop.example.com' } })
    try {
      const res = await request(`https://127.0.0.1:${ports.https}/h1`, { headers: { host: 'shop.example.com' }, dispatcher: agent })
      const answer = await res.body.json() as { machine: string; headers: Record<string, string> }
      assert.equal(answer.machine, 'other1', 'the Host (and SNI) pick the app')
      assert.equal(answer.headers['x-forwarded-proto'], 'https')
    } finally { await agent.close() }
  })

  it('tls without http (apps told apart by SNI), and no handler at all, pass raw bytes through', async () => {
    const secure = await connectTls(ports.tlsRaw, `echo.${domain}`)
    try { assert.equal(await exchange(secure, 'over tls', (t) => t === 'over tls'), 'over tls') } finally { secure.destroy() }
    const other = await connectTls(ports.tlsRaw, `tlsweb.${domain}`)
    try {
      const reply = await exchange(other, `GET /by-sni HTTP/1.1\r\nHost: whatever\r\nConnection: close\r\n\r\n`, (t) => t.includes('"machine"'))
      assert.match(reply, /"machine":"tlsweb1"/, 'the SNI name picked the app on a shared tls-only port')
      assert.doesNotMatch(reply, /fly-client-ip/i, 'no http handler: the bytes pass untouched')
    } finally { other.destroy() }
    const plain = net.connect(ports.raw, '127.0.0.1')
    try { assert.equal(await exchange(plain, 'plain bytes', (t) => t === 'plain bytes'), 'plain bytes') } finally { plain.destroy() }
  })

  it('proxy_proto writes a PROXY v1 header, and v2 when asked (also behind tls)', async () => {
    const v1 = net.connect(ports.ppv1, '127.0.0.1')
    try {
      await new Promise((resolve) => v1.once('connect', resolve))
      const line = await exchange(v1, 'after-header', (t) => t.includes('after-header'))
      const info = JSON.parse(line.slice(0, line.indexOf('\n'))) as { header: string }
      assert.equal(Buffer.from(info.header, 'base64').toString(), `PROXY TCP4 127.0.0.1 127.0.0.1 ${v1.localPort} ${ports.ppv1}\r\n`)
    } finally { v1.destroy() }
    const v2 = await connectTls(ports.ppv2, `pp.${domain}`)
    try {
      const line = await exchange(v2, 'x', (t) => t.includes('\n'))
      const header = Buffer.from((JSON.parse(line.slice(0, line.indexOf('\n'))) as { header: string }).header, 'base64')
      assert.equal(header.length, 28)
      assert.equal(header[12], 0x21)
      assert.equal(header[13], 0x11)
      assert.equal(header.readUInt16BE(24), v2.localPort)
      assert.equal(header.readUInt16BE(26), ports.ppv2)
    } finally { v2.destroy() }
  })

  it('gives back every unit of load it took: all Machines at 0 once clients are done', async () => {
    await waitFor(() => {
      const loads = [...proxy.metrics.machineLoads()]
      return loads.length > 0 && loads.every((m) => m.load === 0)
    }, 3000, `every Machine at load 0, got ${JSON.stringify([...proxy.metrics.machineLoads()].filter((m) => m.load !== 0))}`)
  })

  it('pg_tls: psql with sslmode=require (and verify-full) reaches Postgres through the proxy', async () => {
    const { stdout } = await run('psql', [`host=127.0.0.1 port=${ports.pg} user=postgres dbname=postgres sslmode=require`, '-Atc', 'select ssl from pg_stat_ssl where pid = pg_backend_pid(); select 40 + 2'], { timeout: 20_000 })
    // Postgres itself sees a plain connection from the proxy; the client saw TLS (sslmode=require fails otherwise).
    assert.deepEqual(stdout.trim().split('\n'), ['f', '42'])
    const caFile = join(harness.caDir, 'pg-ca.pem')
    await writeFile(caFile, proxy.caCertPem)
    const verified = await run('psql', [`host=pg.${domain} hostaddr=127.0.0.1 port=${ports.pg} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${caFile}`, '-Atc', 'select 1'], { timeout: 20_000 })
    assert.equal(verified.stdout.trim(), '1')
  })
})
