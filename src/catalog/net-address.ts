import { isIP } from 'node:net'
import { InvalidArgumentError } from '../core/index.js'

// "host:port" and "[v6]:port" parsing, shared by the gossip socket, the sync client and options.

export interface HostPort {
  host: string
  port: number
}

export function parseHostPort(text: string, field = 'address'): HostPort {
  if (typeof text !== 'string' || text.length === 0) throw new InvalidArgumentError(`${field}: expected host:port`)
  let host: string
  let portText: string
  if (text.startsWith('[')) {
    const end = text.indexOf(']')
    if (end < 0 || text[end + 1] !== ':') throw new InvalidArgumentError(`${field}: "${text}" is not [ipv6]:port`)
    host = text.slice(1, end)
    portText = text.slice(end + 2)
  } else {
    const colon = text.lastIndexOf(':')
    if (colon < 0) throw new InvalidArgumentError(`${field}: "${text}" has no port (use host:port)`)
    host = text.slice(0, colon)
    portText = text.slice(colon + 1)
    if (host.includes(':')) throw new InvalidArgumentError(`${field}: write IPv6 addresses as [addr]:port, got "${text}"`)
  }
  const port = Number(portText)
  if (!/^\d+$/.test(portText) || port < 0 || port > 65535) throw new InvalidArgumentError(`${field}: "${portText}" is not a port`)
  if (host.length === 0) throw new InvalidArgumentError(`${field}: empty host in "${text}"`)
  return { host, port }
}

export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`
}

export function hostUrl(host: string, port: number): string {
  return `http://${formatHostPort(host, port)}`
}
