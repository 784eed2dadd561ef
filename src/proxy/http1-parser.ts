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

const METHOD = /^[A-Z]{1,20}$/
/** A header name (RFC 9110 token) immediately followed by ':' — whitespace before the colon is
 * a request-smuggling vector and is refused. Sticky: tested in place, no substring. */
const NAME_COLON = /[!#$%&'*+.^_`|~0-9A-Za-z-]+:/y
/** NUL, a bare CR or a bare LF anywhere in a head: refused (no obs-fold, no lone line ends). */
const BAD_BYTES = /\0|\r(?!\n)|(?<!\r)\n/

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
  /** The head as latin1 text (without the final blank line). */
  text: string
  /** [start, end) offsets of the bytes to forward: the request line and every kept header line
   * with its CRLF. Hop-by-hop and proxy-owned headers fall between the ranges. */
  keep: number[]
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
  text: string
  /** As for requests: the status line and kept header lines. */
  keep: number[]
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

/** The header lines of a parsed head (what `keep` forwards, minus the first line), as text. */
export function keptHeaderLines(head: { text: string; keep: number[] }): string {
  const { text, keep } = head
  const firstLineEnd = text.indexOf('\r\n')
  if (firstLineEnd === -1) return ''
  let out = ''
  for (let i = 0; i < keep.length; i += 2) {
    const start = Math.max(keep[i]!, firstLineEnd + 2)
    const end = Math.min(keep[i + 1]!, text.length)
    if (end > start) out += text.slice(start, end)
  }
  if (out !== '' && !out.endsWith('\r\n')) out += '\r\n'
  return out
}

/** Copies the kept byte ranges of `source`, then `extra` (latin1), then `tail`, into one buffer:
 * one write per head, no string flattening of concatenated lines. */
export function composeHead(source: Buffer, keep: number[], extra: string, tail?: Buffer): Buffer {
  let size = extra.length + (tail?.length ?? 0)
  for (let i = 0; i < keep.length; i += 2) size += keep[i + 1]! - keep[i]!
  const out = Buffer.allocUnsafe(size)
  let at = 0
  for (let i = 0; i < keep.length; i += 2) at += source.copy(out, at, keep[i]!, keep[i + 1]!)
  at += out.write(extra, at, 'latin1')
  if (tail !== undefined) tail.copy(out, at)
  return out
}

/** Parses a request head: `text` is the head up to (not including) the blank line. Throws
 * HttpParseError on malformed input. */
export function parseRequestHead(text: string): RequestHead {
  const firstEnd = text.indexOf('\r\n')
  const requestLine = firstEnd === -1 ? text : text.slice(0, firstEnd)
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
  if (BAD_BYTES.test(text)) throw new HttpParseError(400, 'malformed line ending or NUL in the request head')
  const out: RequestHead = {
    method, target, minor, host: '', contentLength: -1, chunked: false, close: minor === 0, upgrade: '', expectContinue: false,
    text, keep: [], xForwardedFor: '', xForwardedPort: '', preferRegion: '', forceRegion: '', preferInstance: '', forceInstance: '',
  }
  const conn = { close: false, keepAlive: false, upgrade: false }
  let upgradeValue = ''
  let hostSeen = false
  let keepFrom = 0
  let lineStart = firstEnd === -1 ? text.length : firstEnd + 2
  while (lineStart < text.length) {
    let lineEnd = text.indexOf('\r\n', lineStart)
    if (lineEnd === -1) lineEnd = text.length
    NAME_COLON.lastIndex = lineStart
    if (!NAME_COLON.test(text) || NAME_COLON.lastIndex > lineEnd) throw new HttpParseError(400, 'malformed header line')
    const colon = NAME_COLON.lastIndex - 1
    const nameLength = colon - lineStart
    let drop = false
    // Only names of lengths the proxy cares about are looked at (2..34 characters).
    switch (nameLength) {
      case 2: drop = text.slice(lineStart, colon).toLowerCase() === 'te'; break
      case 4:
        if (text.slice(lineStart, colon).toLowerCase() === 'host') {
          if (hostSeen) throw new HttpParseError(400, 'more than one Host header')
          hostSeen = true
          out.host = text.slice(colon + 1, lineEnd).trim()
        }
        break
      case 6:
        if (text.slice(lineStart, colon).toLowerCase() === 'expect') out.expectContinue = text.slice(colon + 1, lineEnd).trim().toLowerCase() === '100-continue'
        break
      case 7:
        if (text.slice(lineStart, colon).toLowerCase() === 'upgrade') upgradeValue = text.slice(colon + 1, lineEnd).trim()
        break
      case 10: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'connection') { connectionTokens(text.slice(colon + 1, lineEnd), conn); drop = true }
        else if (name === 'keep-alive' || name === 'fly-region') drop = true
        break
      }
      case 13: drop = text.slice(lineStart, colon).toLowerCase() === 'fly-client-ip'; break
      case 14: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'content-length') out.contentLength = parseContentLength(text.slice(colon + 1, lineEnd).trim(), out.contentLength)
        else if (name === 'fly-request-id' || name === 'fly-replay-src') drop = true
        break
      }
      case 15: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'x-forwarded-ssl') drop = true
        else if (name === 'x-forwarded-for') {
          const v = text.slice(colon + 1, lineEnd).trim()
          out.xForwardedFor = out.xForwardedFor ? `${out.xForwardedFor}, ${v}` : v
          drop = true
        }
        break
      }
      case 16: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'proxy-connection') drop = true
        else if (name === 'x-forwarded-port') { out.xForwardedPort = text.slice(colon + 1, lineEnd).trim(); drop = true }
        else if (name === 'fly-force-region') { out.forceRegion = text.slice(colon + 1, lineEnd).trim(); drop = true }
        break
      }
      case 17: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'transfer-encoding') out.chunked = parseTransferEncoding(text.slice(colon + 1, lineEnd).trim())
        else if (name === 'x-forwarded-proto') drop = true
        else if (name === 'fly-prefer-region') { out.preferRegion = text.slice(colon + 1, lineEnd).trim(); drop = true }
        break
      }
      case 18: drop = text.slice(lineStart, colon).toLowerCase() === 'fly-forwarded-port'; break
      case 21: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'fly-force-instance-id') { out.forceInstance = text.slice(colon + 1, lineEnd).trim(); drop = true }
        break
      }
      case 22: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'fly-prefer-instance-id') { out.preferInstance = text.slice(colon + 1, lineEnd).trim(); drop = true }
        break
      }
      case 34: drop = text.slice(lineStart, colon).toLowerCase() === 'fly-preferred-instance-unavailable'; break
    }
    if (drop) {
      if (lineStart > keepFrom) out.keep.push(keepFrom, lineStart)
      keepFrom = lineEnd + 2
    }
    lineStart = lineEnd + 2
  }
  // The last kept line's CRLF sits just past `text` (the head ends with CRLF CRLF).
  if (text.length + 2 > keepFrom) out.keep.push(keepFrom, text.length + 2)
  if (out.chunked && out.contentLength !== -1) {
    // RFC 9112 §6.3: both present is a smuggling vector; refuse rather than guess.
    throw new HttpParseError(400, 'both Transfer-Encoding and Content-Length')
  }
  if (minor === 1 && !hostSeen) throw new HttpParseError(400, 'missing Host header')
  if (conn.close) out.close = true
  else if (conn.keepAlive) out.close = false
  if (conn.upgrade && upgradeValue) out.upgrade = upgradeValue
  return out
}

/** Parses a response head (without the blank line). */
export function parseResponseHead(text: string): ResponseHead {
  const firstEnd = text.indexOf('\r\n')
  const statusLine = firstEnd === -1 ? text : text.slice(0, firstEnd)
  if (!statusLine.startsWith('HTTP/1.') || statusLine.length < 12 || (statusLine.length > 12 && statusLine.charCodeAt(12) !== 32)) {
    throw new HttpParseError(502, 'malformed status line from the Machine')
  }
  const minor = statusLine.charCodeAt(7) - 48
  const status = Number(statusLine.slice(9, 12))
  if (!(status >= 100 && status <= 999) || (minor !== 0 && minor !== 1)) throw new HttpParseError(502, 'malformed status line from the Machine')
  const out: ResponseHead = { status, minor, reason: statusLine.slice(13), contentLength: -1, chunked: false, close: minor === 0, text, keep: [], hasServer: false, via: '', flyReplay: '', contentType: '' }
  const conn = { close: false, keepAlive: false, upgrade: false }
  let keepFrom = 0
  let lineStart = firstEnd === -1 ? text.length : firstEnd + 2
  while (lineStart < text.length) {
    let lineEnd = text.indexOf('\r\n', lineStart)
    if (lineEnd === -1) lineEnd = text.length
    const colon = text.indexOf(':', lineStart)
    if (colon <= lineStart || colon > lineEnd) throw new HttpParseError(502, 'malformed header line from the Machine')
    let drop = false
    switch (colon - lineStart) {
      case 3: if (text.slice(lineStart, colon).toLowerCase() === 'via') { const v = text.slice(colon + 1, lineEnd).trim(); out.via = out.via ? `${out.via}, ${v}` : v; drop = true } break
      case 6: if (text.slice(lineStart, colon).toLowerCase() === 'server') out.hasServer = true; break
      case 10: {
        const name = text.slice(lineStart, colon).toLowerCase()
        if (name === 'connection') { connectionTokens(text.slice(colon + 1, lineEnd), conn); drop = true }
        else if (name === 'keep-alive') drop = true
        else if (name === 'fly-replay') { out.flyReplay = text.slice(colon + 1, lineEnd).trim(); drop = true }
        break
      }
      case 12: if (text.slice(lineStart, colon).toLowerCase() === 'content-type') out.contentType = text.slice(colon + 1, lineEnd).trim(); break
      case 14: if (text.slice(lineStart, colon).toLowerCase() === 'content-length') out.contentLength = parseContentLength(text.slice(colon + 1, lineEnd).trim(), out.contentLength); break
      case 17: if (text.slice(lineStart, colon).toLowerCase() === 'transfer-encoding') out.chunked = parseTransferEncoding(text.slice(colon + 1, lineEnd).trim()); break
    }
    if (drop) {
      if (lineStart > keepFrom) out.keep.push(keepFrom, lineStart)
      keepFrom = lineEnd + 2
    }
    lineStart = lineEnd + 2
  }
  if (text.length + 2 > keepFrom) out.keep.push(keepFrom, text.length + 2)
  if (out.chunked) out.contentLength = -1
  if (conn.close) out.close = true
  else if (conn.keepAlive) out.close = false
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
  100: 'Continue', 101: 'Switching Protocols', 200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content', 206: 'Partial Content',
  301: 'Moved Permanently', 302: 'Found', 303: 'See Other', 304: 'Not Modified', 307: 'Temporary Redirect', 308: 'Permanent Redirect',
  401: 'Unauthorized', 403: 'Forbidden', 405: 'Method Not Allowed', 409: 'Conflict', 429: 'Too Many Requests', 400: 'Bad Request', 404: 'Not Found', 408: 'Request Timeout', 413: 'Payload Too Large',
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
