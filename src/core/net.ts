import { createConnection, createServer } from 'node:net'
import { InvalidArgumentError } from './errors.js'

// host:port text and small socket probes, used by the host supervisor, `hangar up`, the NATS
// launcher, the proxy's backhaul and the test kits alike.

/** `host:port` or `[v6]:port` → parts; a typed error names what is wrong. */
export function splitHostPort(addr: string, what = 'address'): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(addr)
  const port = match ? Number(match[3]) : NaN
  if (!match || !Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(`${what}: ${JSON.stringify(addr)} is not host:port (IPv6 as [addr]:port)`)
  return { host: match[1] ?? match[2]!, port }
}

/** `host:port` with an IPv6 host bracketed (an already bracketed one is left as it is). */
export function joinHostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`
}

/** Whether something accepts TCP connections at host:port now. */
export function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/** A TCP port free on `host` right now: `preferred` if it is, else one the system picks. */
export function freePort(preferred = 0, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', (err) => { if (preferred) freePort(0, host).then(resolve, reject); else reject(err) })
    server.listen(preferred, host, () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}
