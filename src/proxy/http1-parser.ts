// A minimal HTTP/1.1 head parser and body framer for the proxy's data path (RFC 9112). It reads
// only what proxying needs (framing, Host, Connection, Upgrade, the Fly request headers) and keeps
// every other header line verbatim, so forwarding a head is string concatenation, not a re-encode.
// Node's `http` module builds objects per header and per request, which is what made the naive
// proxy slow (DESIGN "Proxy"); this parser allocates one object and a few strings per head.

export const CRLFCRLF = Buffer.from('\r\n\r\n')

export class HttpParseError extends Error {
  readonly status: number
  constructor(status: number, message: string) {
    super(message)
    this.status = status
    this.name = 'HttpParseError'
  }
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const METHOD = /^[A-Z]{1,20}$/
const BAD_VALUE = /[\0\r\n]/

export interface RequestHead {
  method: string
  target: string
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number
  host: string
  /** -1 when absent. */
  contentLength: number
  chunked: boolean
  /** The client wants the connection closed after this exchange. */
  close: boolean
  /** The Upgrade header's value when Connection lists upgrade (WebSocket), else ''. */
  upgrade: string
  expectContinue: boolean
  /** Header lines forwarded as-is, each ending in CRLF (hop-by-hop and Fly's own removed). */
  lines: string
  xForwardedFor: string
  xForwardedPort: string
  preferRegion: string
  forceRegion: string
  preferInstance: string
  forceInstance: string
}

export interface ResponseHead {
  status: number
  minor: number
  reason: string
  contentLength: number
  chunked: boolean
  close: boolean
  lines: string
  hasServer: boolean
  via: string
  flyReplay: string
  contentType: string
}

function connectionTokens(value: string, into: { close: boolean; keepAlive: boolean; upgrade: boolean }): void {
  for (const raw of value.split(',')) {
    const token = raw.trim().toLowerCase()
    if (token === 'close') into.close = true
    else if (token === 'keep-alive') into.keepAlive = true
    else if (token === 'upgrade') into.upgrade = true
  }
}

function parseContentLength(value: string, previous: number): number {
  if (!/^\d{1,15}$/.test(value)) throw new HttpParseError(400, `invalid Content-Length ${JSON.stringify(value)}`)
  const n = Number(value)
  if (previous !== -1 && previous !== n) throw new HttpParseError(400, 'conflicting Content-Length headers')
  return n
}

function parseTransferEncoding(value: string): boolean {
  const codings = value.toLowerCase().split(',').map((s) => s.trim()).filter(Boolean)
  if (codings.length === 0) return false
  // RFC 9112 §6.1: chunked must be the final coding of a request; anything else is unframable.
  if (codings[codings.length - 1] !== 'chunked') throw new HttpParseError(501, `unsupported Transfer-Encoding ${JSON.stringify(value)}`)
  return true
}

/** Parses a request head (without the blank line). Throws HttpParseError on malformed input. */
export function parseRequestHead(head: string): RequestHead {
  let lineEnd = head.indexOf('\r\n')
  const requestLine = lineEnd === -1 ? head : head.slice(0, lineEnd)
  const sp1 = requestLine.indexOf(' ')
  const sp2 = requestLine.lastIndexOf(' ')
  if (sp1 <= 0 || sp2 === sp1) throw new HttpParseError(400, 'malformed request line')
  const method = requestLine.slice(0, sp1)
  const target = requestLine.slice(sp1 + 1, sp2)
  const version = requestLine.slice(sp2 + 1)
  if (!METHOD.test(method)) throw new HttpParseError(400, 'malformed method')
  if (target.length === 0 || target.includes(' ')) throw new HttpParseError(400, 'malformed request target')
  let minor: number
  if (version === 'HTTP/1.1') minor = 1
  else if (version === 'HTTP/1.0') minor = 0
  else throw new HttpParseError(505, `unsupported HTTP version ${JSON.stringify(version)}`)
  const out: RequestHead = {
    method, target, minor, host: '', contentLength: -1, chunked: false, close: minor === 0, upgrade: '', expectContinue: false,
    lines: '', xForwardedFor: '', xForwardedPort: '', preferRegion: '', forceRegion: '', preferInstance: '', forceInstance: '',
  }
  const conn = { close: false, keepAlive: false, upgrade: false }
  let upgradeValue = ''
  let hostSeen = false
  let lines = ''
  while (lineEnd !== -1) {
    const start = lineEnd + 2
    lineEnd = head.indexOf('\r\n', start)
    const line = lineEnd === -1 ? head.slice(start) : head.slice(start, lineEnd)
    if (line.length === 0) continue
    const colon = line.indexOf(':')
    if (colon <= 0) throw new HttpParseError(400, 'malformed header line')
    const name = line.slice(0, colon)
    if (!TOKEN.test(name)) throw new HttpParseError(400, `malformed header name ${JSON.stringify(name.slice(0, 40))}`)
    const value = line.slice(colon + 1).trim()
    if (BAD_VALUE.test(value)) throw new HttpParseError(400, 'malformed header value')
    const lower = name.length <= 19 ? name.toLowerCase() : ''
    switch (lower) {
      case 'host':
        if (hostSeen) throw new HttpParseError(400, 'more than one Host header')
        hostSeen = true
        out.host = value
        lines += line + '\r\n'
        continue
      case 'content-length':
        out.contentLength = parseContentLength(value, out.contentLength)
        lines += line + '\r\n'
        continue
      case 'transfer-encoding':
        out.chunked = parseTransferEncoding(value)
        lines += line + '\r\n'
        continue
      case 'connection': connectionTokens(value, conn); continue
      case 'keep-alive': case 'proxy-connection': case 'te': continue
      case 'upgrade': upgradeValue = value; lines += line + '\r\n'; continue
      case 'expect': if (value.toLowerCase() === '100-continue') out.expectContinue = true; lines += line + '\r\n'; continue
      case 'x-forwarded-for': out.xForwardedFor = out.xForwardedFor ? `${out.xForwardedFor}, ${value}` : value; continue
      case 'x-forwarded-port': out.xForwardedPort = value; continue
      // Set by the proxy only; a client's copies are dropped (reference §3.2).
      case 'fly-client-ip': case 'fly-region': case 'fly-forwarded-port': case 'fly-request-id': case 'x-forwarded-proto': case 'x-forwarded-ssl': case 'fly-replay-src': continue
      case 'fly-prefer-region': out.preferRegion = value; continue
      case 'fly-force-region': out.forceRegion = value; continue
      default:
        if (name.length > 19) {
          const longLower = name.toLowerCase()
          if (longLower === 'fly-prefer-instance-id') { out.preferInstance = value; continue }
          if (longLower === 'fly-force-instance-id') { out.forceInstance = value; continue }
          if (longLower === 'fly-preferred-instance-unavailable') continue
        }
        lines += line + '\r\n'
    }
  }
  if (out.chunked && out.contentLength !== -1) {
    // RFC 9112 §6.3: both present is a smuggling vector; refuse rather than guess.
    throw new HttpParseError(400, 'both Transfer-Encoding and Content-Length')
  }
  if (minor === 1 && !hostSeen) throw new HttpParseError(400, 'missing Host header')
  if (conn.close) out.close = true
  else if (conn.keepAlive) out.close = false
  if (conn.upgrade && upgradeValue) out.upgrade = upgradeValue
  out.lines = lines
  return out
}

/** Parses a response head (without the blank line). */
export function parseResponseHead(head: string): ResponseHead {
  let lineEnd = head.indexOf('\r\n')
  const statusLine = lineEnd === -1 ? head : head.slice(0, lineEnd)
  if (!statusLine.startsWith('HTTP/1.') || statusLine.length < 12 || statusLine.charCodeAt(12) !== 32 && statusLine.length > 12) {
    throw new HttpParseError(502, 'malformed status line from the Machine')
  }
  const minor = statusLine.charCodeAt(7) - 48
  const status = Number(statusLine.slice(9, 12))
  if (!(status >= 100 && status <= 999) || (minor !== 0 && minor !== 1)) throw new HttpParseError(502, 'malformed status line from the Machine')
  const out: ResponseHead = { status, minor, reason: statusLine.slice(13), contentLength: -1, chunked: false, close: minor === 0, lines: '', hasServer: false, via: '', flyReplay: '', contentType: '' }
  const conn = { close: false, keepAlive: false, upgrade: false }
  let lines = ''
  while (lineEnd !== -1) {
    const start = lineEnd + 2
    lineEnd = head.indexOf('\r\n', start)
    const line = lineEnd === -1 ? head.slice(start) : head.slice(start, lineEnd)
    if (line.length === 0) continue
    const colon = line.indexOf(':')
    if (colon <= 0) throw new HttpParseError(502, 'malformed header line from the Machine')
    const name = line.slice(0, colon)
    const lower = name.toLowerCase()
    const value = line.slice(colon + 1).trim()
    switch (lower) {
      case 'content-length': out.contentLength = parseContentLength(value, out.contentLength); break
      case 'transfer-encoding': out.chunked = parseTransferEncoding(value); break
      case 'connection': connectionTokens(value, conn); continue
      case 'keep-alive': continue
      case 'server': out.hasServer = true; break
      case 'via': out.via = out.via ? `${out.via}, ${value}` : value; continue
      case 'fly-replay': out.flyReplay = value; continue
      case 'content-type': out.contentType = value; break
    }
    lines += line + '\r\n'
  }
  if (out.chunked) out.contentLength = -1
  if (conn.close) out.close = true
  else if (conn.keepAlive) out.close = false
  out.lines = lines
  return out
}

// Body framing: tells where a message body ends in a byte stream, without copying it.

const enum Chunk { Size, Ext, SizeLf, Data, DataCr, DataLf, TrailerStart, TrailerLine, TrailerLf, EndLf }

export class BodyFramer {
  /** 'length': `remaining` bytes; 'chunked': chunked coding; 'close': until the peer closes. */
  mode: 'none' | 'length' | 'chunked' | 'close' = 'none'
  remaining = 0
  private chunk = Chunk.Size
  private sizeDigits = 0

  reset(mode: 'none' | 'length' | 'chunked' | 'close', length = 0): void {
    this.mode = mode
    this.remaining = length
    this.chunk = Chunk.Size
    this.sizeDigits = 0
    if (mode === 'length' && length === 0) this.mode = 'none'
  }

  get done(): boolean {
    return this.mode === 'none'
  }

  /** Consumes bytes [start, end) and returns the offset just past the body's end, or -1 when the
   * body continues beyond `end`. Throws HttpParseError on a malformed chunked coding. */
  consume(buf: Buffer, start: number, end: number): number {
    switch (this.mode) {
      case 'none': return start
      case 'close': return -1
      case 'length': {
        const available = end - start
        if (available < this.remaining) { this.remaining -= available; return -1 }
        const stop = start + this.remaining
        this.remaining = 0
        this.mode = 'none'
        return stop
      }
      case 'chunked': return this.consumeChunked(buf, start, end)
    }
  }

  private consumeChunked(buf: Buffer, start: number, end: number): number {
    let i = start
    while (i < end) {
      switch (this.chunk) {
        case Chunk.Size: {
          const c = buf[i]!
          const digit = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1
          if (digit >= 0) {
            if (++this.sizeDigits > 12) throw new HttpParseError(400, 'chunk size too large')
            this.remaining = this.remaining * 16 + digit
            i++
          } else if (this.sizeDigits === 0) {
            throw new HttpParseError(400, 'malformed chunk size')
          } else if (c === 13) { this.chunk = Chunk.SizeLf; i++ }
          else if (c === 59 || c === 32 || c === 9) { this.chunk = Chunk.Ext; i++ }
          else throw new HttpParseError(400, 'malformed chunk size')
          break
        }
        case Chunk.Ext: {
          const cr = buf.indexOf(13, i)
          if (cr === -1 || cr >= end) return -1
          i = cr + 1
          this.chunk = Chunk.SizeLf
          break
        }
        case Chunk.SizeLf:
          if (buf[i] !== 10) throw new HttpParseError(400, 'malformed chunk size line')
          i++
          this.sizeDigits = 0
          this.chunk = this.remaining === 0 ? Chunk.TrailerStart : Chunk.Data
          break
        case Chunk.Data: {
          const take = Math.min(this.remaining, end - i)
          i += take
          this.remaining -= take
          if (this.remaining === 0) this.chunk = Chunk.DataCr
          break
        }
        case Chunk.DataCr:
          if (buf[i] !== 13) throw new HttpParseError(400, 'missing CRLF after chunk data')
          i++
          this.chunk = Chunk.DataLf
          break
        case Chunk.DataLf:
          if (buf[i] !== 10) throw new HttpParseError(400, 'missing CRLF after chunk data')
          i++
          this.chunk = Chunk.Size
          break
        case Chunk.TrailerStart:
          if (buf[i] === 13) { this.chunk = Chunk.EndLf; i++ }
          else this.chunk = Chunk.TrailerLine
          break
        case Chunk.TrailerLine: {
          const cr = buf.indexOf(13, i)
          if (cr === -1 || cr >= end) return -1
          i = cr + 1
          this.chunk = Chunk.TrailerLf
          break
        }
        case Chunk.TrailerLf:
          if (buf[i] !== 10) throw new HttpParseError(400, 'malformed trailer')
          i++
          this.chunk = Chunk.TrailerStart
          break
        case Chunk.EndLf:
          if (buf[i] !== 10) throw new HttpParseError(400, 'malformed last chunk')
          i++
          this.mode = 'none'
          this.chunk = Chunk.Size
          return i
      }
    }
    return -1
  }
}

/** Status codes that never carry a body (RFC 9112 §6.3). */
export function responseHasNoBody(method: string, status: number): boolean {
  return method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200)
}

const REASONS: Record<number, string> = {
  200: 'OK', 301: 'Moved Permanently', 400: 'Bad Request', 404: 'Not Found', 408: 'Request Timeout', 413: 'Payload Too Large',
  421: 'Misdirected Request', 431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 501: 'Not Implemented',
  502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout', 505: 'HTTP Version Not Supported',
}

export function reasonPhrase(status: number): string {
  return REASONS[status] ?? 'Unknown'
}

/** Decodes a complete chunked body (already validated by BodyFramer) into its payload. */
export function dechunk(buf: Buffer): Buffer {
  const parts: Buffer[] = []
  let i = 0
  for (;;) {
    const lineEnd = buf.indexOf('\r\n', i)
    if (lineEnd === -1) break
    const size = parseInt(buf.toString('latin1', i, lineEnd).split(';')[0]!.trim(), 16)
    if (!Number.isFinite(size) || size === 0) break
    parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size))
    i = lineEnd + 2 + size + 2
  }
  return Buffer.concat(parts)
}
