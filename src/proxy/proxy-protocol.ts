import net from 'node:net'

// The PROXY protocol header the proxy_proto handler writes before the client's bytes
// (reference §3.2; spec https://www.haproxy.org/download/1.8/doc/proxy-protocol.txt):
// v1 is one text line, v2 a binary header selected by `proxy_proto_options.version = "v2"`.

export interface Endpoint { address: string; port: number }

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])

function unmapped(address: string): string {
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address
}

export function proxyHeaderV1(source: Endpoint, destination: Endpoint): Buffer {
  const src = unmapped(source.address)
  const dst = unmapped(destination.address)
  const family = net.isIPv4(src) && net.isIPv4(dst) ? 'TCP4' : net.isIPv6(src) && net.isIPv6(dst) ? 'TCP6' : ''
  if (family === '') return Buffer.from('PROXY UNKNOWN\r\n', 'latin1')
  return Buffer.from(`PROXY ${family} ${src} ${dst} ${source.port} ${destination.port}\r\n`, 'latin1')
}

function ipv6Bytes(address: string): Buffer {
  const out = Buffer.alloc(16)
  let text = address
  const v4 = text.match(/(\d+\.\d+\.\d+\.\d+)$/)
  if (v4) {
    const parts = v4[1]!.split('.').map(Number)
    const hex = `${((parts[0]! << 8) | parts[1]!).toString(16)}:${((parts[2]! << 8) | parts[3]!).toString(16)}`
    text = text.slice(0, -v4[1]!.length) + hex
  }
  const [head, tail] = text.includes('::') ? text.split('::') as [string, string] : [text, undefined]
  const headGroups = head ? head.split(':') : []
  const tailGroups = tail ? tail.split(':') : []
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups]
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g || '0', 16), i * 2))
  return out
}

export function proxyHeaderV2(source: Endpoint, destination: Endpoint): Buffer {
  const src = unmapped(source.address)
  const dst = unmapped(destination.address)
  if (net.isIPv4(src) && net.isIPv4(dst)) {
    const out = Buffer.alloc(16 + 12)
    V2_SIGNATURE.copy(out, 0)
    out[12] = 0x21 // version 2, PROXY command
    out[13] = 0x11 // AF_INET, STREAM
    out.writeUInt16BE(12, 14)
    src.split('.').forEach((b, i) => { out[16 + i] = Number(b) })
    dst.split('.').forEach((b, i) => { out[20 + i] = Number(b) })
    out.writeUInt16BE(source.port, 24)
    out.writeUInt16BE(destination.port, 26)
    return out
  }
  if (net.isIP(src) && net.isIP(dst)) {
    const out = Buffer.alloc(16 + 36)
    V2_SIGNATURE.copy(out, 0)
    out[12] = 0x21
    out[13] = 0x21 // AF_INET6, STREAM
    out.writeUInt16BE(36, 14)
    ipv6Bytes(net.isIPv4(src) ? `::ffff:${src}` : src).copy(out, 16)
    ipv6Bytes(net.isIPv4(dst) ? `::ffff:${dst}` : dst).copy(out, 32)
    out.writeUInt16BE(source.port, 48)
    out.writeUInt16BE(destination.port, 50)
    return out
  }
  const out = Buffer.alloc(16)
  V2_SIGNATURE.copy(out, 0)
  out[12] = 0x20 // LOCAL: no address information
  out[13] = 0x00
  out.writeUInt16BE(0, 14)
  return out
}
