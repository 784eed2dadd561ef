// `npm run bench:proxy` (node dist/bench/proxy/run.js): Hangar's proxy against the same job done
// straight, by HAProxy and by nginx, on the same nginx backend in the same run (DESIGN "Proxy").
//   HTTP: wrk, small responses, keep-alive; requests/s and p50/p99, medians of RUNS runs.
//   TCP:  curl fetching a 256 MB file through a raw-TCP (no handler) port; MB/s.
//   Memory: RSS growth of the proxy process(es) holding 10,000 idle client connections.
// Every server listens on 127.0.0.1 with temp configs and is stopped at the end, also on failure.
// Options (env): RUNS (default 3), SECONDS (default 5), CONNECTIONS (default 50), IDLE (10000).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile, readFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createClusterCa } from '../../src/proxy/index.js'

const RUNS = Number(process.env.RUNS ?? 3)
const SECONDS = Number(process.env.SECONDS ?? 5)
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 50)
const IDLE = Number(process.env.IDLE ?? 10_000)
const NOFILE = 20_000
/** HAProxy reserves two sockets per connection and refuses to start when maxconn needs more
 * than the file limit (20,000 here, a hard limit no process may raise): it holds at most this
 * many connections, so its idle-memory figure is measured at this count and scaled to IDLE. */
const HAPROXY_MAXCONN = Math.min(IDLE + 100, Math.floor((NOFILE - 300) / 2))
const PROXY_CHILD = fileURLToPath(new URL('./proxy-child.js', import.meta.url))
const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so'

interface Target { name: string; httpPort: number; tcpPort: number; pids: () => number[] }
interface HttpResult { rps: number; p50: number; p99: number }

const children: ChildProcess[] = []
let workDir = ''

async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })
}

/** Starts a long-running server, remembered for cleanup. */
function launch(command: string, args: string[], ready?: (output: string) => boolean): Promise<ChildProcess> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  let output = ''
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      output += d.toString()
      if (ready?.(output)) resolve(child)
    }
    child.stdout!.on('data', onData)
    child.stderr!.on('data', onData)
    child.once('exit', (code) => reject(new Error(`${command} exited with ${code}: ${output}`)))
    if (!ready) setTimeout(() => resolve(child), 300)
  })
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`nothing listens on ${port}`)
}

function parseLatency(value: string, unit: string): number {
  const n = Number(value)
  return unit === 'us' ? n / 1000 : unit === 's' ? n * 1000 : n
}

function wrk(url: string, seconds: number, connections: number): { rps: number; p50: number; p99: number; mbps: number } {
  const out = execFileSync('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', url], { encoding: 'utf8' })
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0)
  const p50 = /50%\s+([\d.]+)(us|ms|s)/.exec(out)
  const p99 = /99%\s+([\d.]+)(us|ms|s)/.exec(out)
  const transfer = /Transfer\/sec:\s+([\d.]+)(B|KB|MB|GB)/.exec(out)
  const scale: Record<string, number> = { B: 1 / 1048576, KB: 1 / 1024, MB: 1, GB: 1024 }
  if (/Non-2xx|Socket errors/.test(out) && process.env.BENCH_VERBOSE) process.stderr.write(out)
  return {
    rps,
    p50: p50 ? parseLatency(p50[1]!, p50[2]!) : NaN,
    p99: p99 ? parseLatency(p99[1]!, p99[2]!) : NaN,
    mbps: transfer ? Number(transfer[1]) * scale[transfer[2]!]! : 0,
  }
}

/** One large download with curl (C, large buffers: the client is not the bottleneck), MB/s. */
function download(url: string): number {
  const out = execFileSync('curl', ['-s', '-o', '/dev/null', '-w', '%{speed_download} %{size_download}', url], { encoding: 'utf8' })
  const [speed, size] = out.trim().split(' ').map(Number)
  if (size !== 256 * 1024 * 1024) throw new Error(`download of ${url} got ${size} bytes`)
  return speed! / 1048576
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

function rssKb(pids: number[]): number {
  let total = 0
  for (const pid of pids) {
    try {
      const status = execFileSync('cat', [`/proc/${pid}/status`], { encoding: 'utf8' })
      total += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
    } catch { /* gone */ }
  }
  return total
}

function descendants(pid: number | undefined): number[] {
  if (pid === undefined) return []
  const out: number[] = []
  const walk = (p: number) => {
    let kids: number[] = []
    try { kids = execFileSync('pgrep', ['-P', String(p)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number) } catch { /* none */ }
    for (const k of kids) { out.push(k); walk(k) }
  }
  walk(pid)
  return out
}

async function idleMemory(target: Target): Promise<number> {
  const count = target.name === 'haproxy' ? Math.min(IDLE, HAPROXY_MAXCONN - 100) : IDLE
  const before = rssKb(target.pids())
  const sockets: net.Socket[] = []
  try {
    for (let i = 0; i < count; i++) {
      const socket = net.connect(target.httpPort, '127.0.0.1')
      socket.on('error', () => {})
      sockets.push(socket)
      if (i % 500 === 499) await new Promise((resolve) => setTimeout(resolve, 20))
    }
    await Promise.all(sockets.map((s) => new Promise((resolve) => { if (!s.connecting) resolve(undefined); else s.once('connect', resolve); s.once('error', resolve) })))
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const open = sockets.filter((s) => !s.destroyed).length
    const after = rssKb(target.pids())
    if (open < count) process.stderr.write(`  ${target.name}: only ${open} of ${count} idle connections stayed open\n`)
    if (count < IDLE) process.stderr.write(`  ${target.name}: measured at ${count} connections, scaled to ${IDLE}\n`)
    return ((after - before) / 1024) * (IDLE / count)
  } finally {
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
}

async function main(): Promise<void> {
  workDir = await mkdtemp(join(tmpdir(), 'hangar-bench-proxy-'))
  await chmod(workDir, 0o755) // nginx workers (not root) read big.bin from here
  const backendPort = await freePort()
  const small = 'hello world\n'
  const big = Buffer.alloc(16 * 1024 * 1024, 120)
  for (let i = 0; i < 16; i++) await writeFile(join(workDir, 'big.bin'), big, { flag: i === 0 ? 'w' : 'a' })

  // The backend: nginx, one worker, a small response at / and a 64 MB file at /big.bin.
  await writeFile(join(workDir, 'backend.conf'), `worker_processes 1; daemon off; pid ${workDir}/backend.pid; error_log ${workDir}/backend-error.log;
events { worker_connections 30000; }
http { access_log off; keepalive_requests 10000000; sendfile on;
  server { listen 127.0.0.1:${backendPort}; root ${workDir};
    location = / { return 200 "${small.trim()}\\n"; } } }
`)
  const backend = await launch('nginx', ['-c', join(workDir, 'backend.conf'), '-p', workDir])
  await waitForPort(backendPort)

  const targets: Target[] = [{ name: 'direct', httpPort: backendPort, tcpPort: backendPort, pids: () => [] }]

  // Hangar: one http service and one raw TCP (no handler) service on the same backend.
  const hangarHttp = await freePort()
  const hangarTcp = await freePort()
  const machine = {
    machineId: 'bench1', app: 'bench', org: 'o', region: 'bench', hostId: 'bench-host', state: 'started', instanceId: 'i', address: '127.0.0.1',
    services: [{ internal_port: backendPort, protocol: 'tcp', ports: [{ port: hangarHttp, handlers: ['http'] }, { port: hangarTcp, handlers: [] }], concurrency: { type: 'requests', soft_limit: 5000, hard_limit: 10000 } }],
    checks: [], cordoned: false, processGroup: 'app', stopConfig: {}, primaryRegion: 'bench', updatedAt: 1,
  }
  const hangar = await launch(process.execPath, [PROXY_CHILD, JSON.stringify({ machines: [machine], caDir: join(workDir, 'ca') })], (o) => o.includes('ready'))
  targets.push({ name: 'hangar', httpPort: hangarHttp, tcpPort: hangarTcp, pids: () => [hangar.pid!, ...descendants(hangar.pid)] })

  // Hangar across hosts (issue 4): an edge proxy whose Machine is on another "host", reached over
  // the backhaul (mutual TLS, one HTTP/2 stream per request or connection) through that host's
  // worker proxy, which opens a fresh connection to the backend per stream. Both on loopback.
  const clusterCaDir = join(workDir, 'cluster-ca')
  await createClusterCa(clusterCaDir)
  const workerBackhaul = await freePort()
  const edgeHttp = await freePort()
  const edgeTcp = await freePort()
  const remoteMachine = { ...machine, hostId: 'bench-worker', services: [{ ...machine.services[0]!, ports: [{ port: edgeHttp, handlers: ['http'] }, { port: edgeTcp, handlers: [] }] }] }
  const peers = [{ hostId: 'bench-worker', region: 'bench', addr: `127.0.0.1:${workerBackhaul}` }, { hostId: 'bench-edge', region: 'bench', addr: `127.0.0.1:${await freePort()}` }]
  const worker = await launch(process.execPath, [PROXY_CHILD, JSON.stringify({ machines: [remoteMachine], caDir: join(workDir, 'ca-worker'), hostId: 'bench-worker', ports: [], backhaul: { clusterCaDir, listenPort: workerBackhaul, peers: [] } })], (o) => o.includes('ready'))
  const edge = await launch(process.execPath, [PROXY_CHILD, JSON.stringify({ machines: [remoteMachine], caDir: join(workDir, 'ca-edge'), hostId: 'bench-edge', backhaul: { clusterCaDir, peers } })], (o) => o.includes('ready'))
  targets.push({ name: 'backhaul', httpPort: edgeHttp, tcpPort: edgeTcp, pids: () => [edge.pid!, worker.pid!] })

  // HAProxy: leastconn with a per-server maxconn, the same job (http and tcp modes).
  const haHttp = await freePort()
  const haTcp = await freePort()
  await writeFile(join(workDir, 'haproxy.cfg'), `global
  maxconn ${HAPROXY_MAXCONN}
  ulimit-n ${NOFILE}
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout queue 10s
frontend fe_http
  mode http
  bind 127.0.0.1:${haHttp}
  option http-keep-alive
  default_backend be_http
backend be_http
  mode http
  balance leastconn
  server s1 127.0.0.1:${backendPort} maxconn 10000
frontend fe_tcp
  mode tcp
  bind 127.0.0.1:${haTcp}
  default_backend be_tcp
backend be_tcp
  mode tcp
  balance leastconn
  server s1 127.0.0.1:${backendPort} maxconn 10000
`)
  const haproxy = await launch('haproxy', ['-f', join(workDir, 'haproxy.cfg')])
  await waitForPort(haHttp)
  targets.push({ name: 'haproxy', httpPort: haHttp, tcpPort: haTcp, pids: () => [haproxy.pid!, ...descendants(haproxy.pid)] })

  // nginx as a reverse proxy (keep-alive upstream) and, with the stream module, a TCP proxy.
  const ngHttp = await freePort()
  const ngTcp = await freePort()
  const stream = (await readFile(STREAM_MODULE).then(() => true, () => false))
  await writeFile(join(workDir, 'nginx-proxy.conf'), `${stream ? `load_module ${STREAM_MODULE};` : ''}
worker_processes auto; daemon off; pid ${workDir}/proxy.pid; error_log ${workDir}/proxy-error.log; worker_rlimit_nofile ${NOFILE};
events { worker_connections 19000; }
http { access_log off; keepalive_requests 10000000; client_header_timeout 60s; keepalive_timeout 60s;
  upstream backend { server 127.0.0.1:${backendPort} max_conns=10000; keepalive 256; }
  server { listen 127.0.0.1:${ngHttp}; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
${stream ? `stream { server { listen 127.0.0.1:${ngTcp}; proxy_pass 127.0.0.1:${backendPort}; } }` : ''}
`)
  const nginxProxy = await launch('nginx', ['-c', join(workDir, 'nginx-proxy.conf'), '-p', workDir])
  await waitForPort(ngHttp)
  targets.push({ name: 'nginx', httpPort: ngHttp, tcpPort: stream ? ngTcp : 0, pids: () => [nginxProxy.pid!, ...descendants(nginxProxy.pid)] })

  // Memory first, on fresh processes (before load leaves garbage behind).
  const memory = new Map<string, number>()
  for (const t of targets.slice(1)) {
    if (t.name === 'backhaul') continue // two processes and a link: not comparable with one proxy
    memory.set(t.name, await idleMemory(t))
    process.stderr.write(`  memory ${t.name}: ${memory.get(t.name)!.toFixed(1)} MB for ${IDLE} idle connections\n`)
  }

  let haveCurl = true
  try { execFileSync('curl', ['--version'], { stdio: 'ignore' }) } catch { haveCurl = false; process.stderr.write('  curl is not installed: no raw TCP figures\n') }
  const cpu = execFileSync('nproc', { encoding: 'utf8' }).trim()
  process.stdout.write(`# Proxy benchmark: ${RUNS} runs × ${SECONDS}s, wrk -t1 -c${CONNECTIONS}, ${cpu} cores shared by wrk, the proxy and the nginx backend\n\n`)

  // Warm up every path once (connection pools, JIT).
  for (const t of targets) wrk(`http://127.0.0.1:${t.httpPort}/`, 1, CONNECTIONS)

  const http = new Map<string, HttpResult[]>()
  const tcp = new Map<string, number[]>()
  for (let run = 0; run < RUNS; run++) {
    for (const t of targets) {
      const r = wrk(`http://127.0.0.1:${t.httpPort}/`, SECONDS, CONNECTIONS)
      http.set(t.name, [...(http.get(t.name) ?? []), r])
      process.stderr.write(`  http ${t.name} run ${run + 1}: ${r.rps.toFixed(0)} req/s p50 ${r.p50.toFixed(2)} ms p99 ${r.p99.toFixed(2)} ms\n`)
    }
    for (const t of targets) {
      if (!t.tcpPort || !haveCurl) continue
      const mbps = download(`http://127.0.0.1:${t.tcpPort}/big.bin`)
      tcp.set(t.name, [...(tcp.get(t.name) ?? []), mbps])
      process.stderr.write(`  tcp ${t.name} run ${run + 1}: ${mbps.toFixed(0)} MB/s\n`)
    }
  }
  const med = (name: string, pick: (r: HttpResult) => number) => median((http.get(name) ?? []).map(pick))
  const direct = med('direct', (r) => r.rps)
  const ha = med('haproxy', (r) => r.rps)
  const lines = [
    '| path | req/s | vs direct | vs HAProxy | p50 ms | p99 ms | raw TCP MB/s | TCP vs HAProxy | RSS for ' + IDLE.toLocaleString('en') + ' idle conns |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  const haTcpMbps = tcp.has('haproxy') ? median(tcp.get('haproxy')!) : NaN
  for (const t of targets) {
    const rps = med(t.name, (r) => r.rps)
    const mbps = tcp.has(t.name) ? median(tcp.get(t.name)!) : NaN
    const mem = memory.get(t.name)
    lines.push(`| ${t.name === 'direct' ? 'straight to nginx' : t.name === 'hangar' ? 'Hangar proxy' : t.name === 'backhaul' ? 'Hangar edge → backhaul → worker' : t.name === 'haproxy' ? 'HAProxy (leastconn, maxconn)' : 'nginx reverse proxy'} | ${rps.toFixed(0)} | ${(rps / direct).toFixed(2)} | ${(rps / ha).toFixed(2)} | ${med(t.name, (r) => r.p50).toFixed(2)} | ${med(t.name, (r) => r.p99).toFixed(2)} | ${Number.isNaN(mbps) ? 'n/a' : mbps.toFixed(0)} | ${Number.isNaN(mbps) ? 'n/a' : (mbps / haTcpMbps).toFixed(2)} | ${mem === undefined ? '—' : `${mem.toFixed(1)} MB`} |`)
  }
  process.stdout.write(lines.join('\n') + '\n')
  void backend
}

async function cleanup(): Promise<void> {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
  }
  await new Promise((resolve) => setTimeout(resolve, 300))
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  if (workDir) await rm(workDir, { recursive: true, force: true })
}

try {
  await main()
} finally {
  await cleanup()
}
