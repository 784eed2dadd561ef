// A real backend process for the proxy's tests: one per "Machine", started by test/kit/backends.ts
// as its own Node process bound to the Machine's address. Modes (argv[2]):
//   http   HTTP/1.1 server: answers JSON {machine, method, url, headers, body}; /slow?ms=N waits;
//          /replay?h=<fly-replay value> answers with a fly-replay header; /replay-json?b=<json>
//          answers with the JSON form; /ws upgrades to a WebSocket echo (the `ws` package).
//   h2c    HTTP/2 cleartext (prior knowledge) server answering the same JSON.
//   echo   raw TCP: writes back everything it reads.
//   proxyproto  raw TCP: writes back the PROXY header it got, as JSON, then echoes.
// It prints "ready" on stdout once listening.
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import { WebSocketServer } from 'ws'

const [mode, host, portText, machineId] = process.argv.slice(2) as [string, string, string, string]
const port = Number(portText)

function answer(method: string, url: string, headers: Record<string, unknown>, body: string): string {
  return JSON.stringify({ machine: machineId, method, url, headers, body })
}

function ready(server: net.Server): void {
  server.listen({ host, port }, () => process.stdout.write('ready\n'))
}

if (mode === 'http') {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x')
      const body = Buffer.concat(chunks).toString('utf8')
      const send = () => {
        if (url.pathname === '/replay') {
          res.writeHead(200, { 'fly-replay': url.searchParams.get('h') ?? '' })
          res.end('replaying')
          return
        }
        if (url.pathname === '/replay-json') {
          res.writeHead(200, { 'content-type': 'application/vnd.fly.replay+json' })
          res.end(url.searchParams.get('b') ?? '{}')
          return
        }
        if (url.pathname === '/replay-unless-src') {
          if (req.headers['fly-replay-src']) { res.writeHead(200, { 'content-type': 'application/json' }); res.end(answer(req.method ?? '', req.url ?? '', req.headers, body)); return }
          res.writeHead(200, { 'fly-replay': url.searchParams.get('h') ?? '' })
          res.end('replaying')
          return
        }
        if (url.pathname === '/chunked') {
          res.writeHead(200, { 'content-type': 'text/plain' })
          res.write('hello ')
          setTimeout(() => res.end('world'), 10)
          return
        }
        res.writeHead(200, { 'content-type': 'application/json', server: 'backend' })
        res.end(answer(req.method ?? '', req.url ?? '', req.headers, body))
      }
      const ms = Number(url.searchParams.get('ms') ?? 0)
      if (url.pathname === '/slow' && ms > 0) setTimeout(send, ms)
      else send()
    })
  })
  server.keepAliveTimeout = 10_000
  const wss = new WebSocketServer({ noServer: true })
  server.on('upgrade', (req, socket, head) => {
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `${machineId}:${data.toString()}`))
    })
  })
  ready(server)
} else if (mode === 'h2c') {
  const server = http2.createServer()
  server.on('stream', (stream, headers) => {
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    stream.on('end', () => {
      stream.respond({ ':status': 200, 'content-type': 'application/json', 'x-backend-protocol': 'h2c' })
      const plain: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(headers)) plain[k] = v
      stream.end(answer(String(headers[':method']), String(headers[':path']), plain, Buffer.concat(chunks).toString('utf8')))
    })
  })
  ready(server as unknown as net.Server)
} else if (mode === 'echo') {
  ready(net.createServer((socket) => socket.pipe(socket)))
} else if (mode === 'proxyproto') {
  ready(net.createServer((socket) => {
    let buffered = Buffer.alloc(0)
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk])
      let header: Buffer | undefined
      let rest: Buffer
      if (buffered.subarray(0, 6).toString('latin1') === 'PROXY ') {
        const end = buffered.indexOf('\r\n')
        if (end === -1) return
        header = buffered.subarray(0, end + 2)
        rest = buffered.subarray(end + 2)
      } else if (buffered.length >= 16 && buffered[12] === 0x21) {
        const len = buffered.readUInt16BE(14)
        if (buffered.length < 16 + len) return
        header = buffered.subarray(0, 16 + len)
        rest = buffered.subarray(16 + len)
      } else {
        if (buffered.length < 16) return
        header = Buffer.alloc(0)
        rest = buffered
      }
      socket.removeListener('data', onData)
      socket.write(JSON.stringify({ machine: machineId, header: header.toString('base64') }) + '\n')
      if (rest.length > 0) socket.write(rest)
      socket.pipe(socket)
    }
    socket.on('data', onData)
  }))
} else {
  process.stderr.write(`unknown mode ${mode}\n`)
  process.exit(2)
}

process.on('SIGTERM', () => process.exit(0))
