import { createSocket } from 'node:dgram'
import { connect, isIP } from 'node:net'
import { randomInt } from 'node:crypto'
import { UnavailableError, InvalidArgumentError } from '../core/index.js'
import { DNS_TYPE, encodeQuery, parseResponse, type DecodedResponse } from './dns-wire.js'

// A tiny stub resolver for one question: what tests, `hangar dns --query` and health checks use
// to ask a DNS server directly (UDP by default, TCP on request or when the answer is truncated).

export interface DnsQueryOptions {
  server: string
  port?: number
  /** UDP (default) falls back to TCP when the answer comes back truncated. */
  transport?: 'udp' | 'tcp'
  timeoutMs?: number
  /** Ask with EDNS(0) and this UDP payload size. */
  ednsUdpSize?: number
}

export type DnsTypeName = keyof typeof DNS_TYPE

export function dnsTypeNumber(type: DnsTypeName | number | string): number {
  if (typeof type === 'number') return type
  if (/^\d+$/.test(type)) return Number(type)
  const number = (DNS_TYPE as Record<string, number>)[type.toUpperCase()]
  if (number === undefined) throw new InvalidArgumentError(`unknown DNS type "${type}" (use one of ${Object.keys(DNS_TYPE).join(', ')})`)
  return number
}

function overUdp(packet: Buffer, server: string, port: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(isIP(server) === 6 ? 'udp6' : 'udp4')
    const id = packet.readUInt16BE(0)
    const timer = setTimeout(() => { socket.close(); reject(new UnavailableError(`no DNS answer from ${server}:${port} within ${timeoutMs} ms`)) }, timeoutMs)
    socket.on('message', (message) => {
      if (message.length < 2 || message.readUInt16BE(0) !== id) return
      clearTimeout(timer)
      socket.close()
      resolve(message)
    })
    socket.on('error', (err) => { clearTimeout(timer); try { socket.close() } catch { /* closed */ } reject(new UnavailableError(`DNS query to ${server}:${port}: ${err.message}`, { cause: err })) })
    socket.send(packet, port, server)
  })
}

function overTcp(packet: Buffer, server: string, port: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: server, port })
    let buffered = Buffer.alloc(0)
    const fail = (message: string) => { socket.destroy(); reject(new UnavailableError(message)) }
    socket.setTimeout(timeoutMs, () => fail(`no DNS answer over TCP from ${server}:${port} within ${timeoutMs} ms`))
    socket.on('error', (err) => fail(`DNS query over TCP to ${server}:${port}: ${err.message}`))
    socket.on('connect', () => {
      const frame = Buffer.alloc(2 + packet.length)
      frame.writeUInt16BE(packet.length, 0)
      packet.copy(frame, 2)
      socket.write(frame)
    })
    socket.on('data', (chunk) => {
      buffered = Buffer.concat([buffered, chunk])
      if (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
        socket.destroy()
        resolve(buffered.subarray(2, 2 + buffered.readUInt16BE(0)))
      }
    })
    socket.on('end', () => fail(`${server}:${port} closed the TCP connection without an answer`))
  })
}

/** Asks one question and returns the decoded answer. */
export async function queryDns(name: string, type: DnsTypeName | number | string, options: DnsQueryOptions): Promise<DecodedResponse> {
  const port = options.port ?? 53
  const timeoutMs = options.timeoutMs ?? 3000
  const packet = encodeQuery(randomInt(0, 65536), name, dnsTypeNumber(type), { ednsUdpSize: options.ednsUdpSize })
  let raw = options.transport === 'tcp' ? await overTcp(packet, options.server, port, timeoutMs) : await overUdp(packet, options.server, port, timeoutMs)
  let response = parseResponse(raw)
  if (response?.truncated && options.transport !== 'tcp') {
    raw = await overTcp(packet, options.server, port, timeoutMs)
    response = parseResponse(raw)
  }
  if (!response) throw new UnavailableError(`${options.server}:${port} sent an answer that is not DNS`)
  return response
}
