// The DNS wire format (RFC 1035 §4, EDNS(0) from RFC 6891), as much as `.internal` DNS needs:
// reading one query, writing its answer, and reading answers (for the forwarder's checks and
// `queryDns`). Hand-written over Buffers so nothing a client sends can throw: every read is
// bounds-checked and a packet that does not parse is either dropped (no usable header) or
// answered FORMERR.

import { isIPv6 } from 'node:net'
import { formatIpv6 as formatIpv6Value, parseIpv6 as parseIpv6Value } from './wireguard-plan.js'

export const DNS_TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, OPT: 41, ANY: 255 } as const
export const DNS_CLASS_IN = 1

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const
export type Rcode = (typeof RCODE)[keyof typeof RCODE]

const HEADER_BYTES = 12
/** RFC 1035 §2.3.4: a name is at most 255 octets on the wire, a label at most 63. */
const MAX_NAME_BYTES = 255
/** The classic UDP limit without EDNS (RFC 1035 §4.2.1). */
export const CLASSIC_UDP_BYTES = 512
/** What Hangar offers over EDNS: the DNS flag day 2020 size, safe from fragmentation. */
export const EDNS_UDP_BYTES = 1232

export interface DnsQuery {
  id: number
  /** Recursion desired, echoed in the answer. */
  rd: boolean
  /** The checking-disabled bit, echoed. */
  cd: boolean
  /** Labels as sent (latin1), and lower-cased for lookups (DNS names are ASCII case-insensitive). */
  labels: string[]
  name: string
  qtype: number
  qclass: number
  /** The question's bytes (name, type, class) as sent, echoed in the answer so 0x20 case
   * randomisation survives. */
  questionBytes: Buffer
  /** EDNS(0): the client's UDP payload size, when it sent an OPT record. */
  ednsUdpSize?: number
}

/** What a packet that is not a usable query gets: `drop` for garbage and for responses (a
 * server never answers an answer: no reflection loops), an error rcode when the header is good. */
export type QueryParse =
  | { kind: 'query'; query: DnsQuery }
  | { kind: 'error'; id: number; rd: boolean; rcode: Rcode; opcode: number }
  | { kind: 'drop' }

interface NameRead { labels: string[]; end: number }

/** Reads an uncompressed name at `offset` (questions carry no compression pointers in practice;
 * a pointer there is a format error). */
function readQuestionName(buf: Buffer, offset: number): NameRead | undefined {
  const labels: string[] = []
  let at = offset
  let wireBytes = 0
  for (;;) {
    if (at >= buf.length) return undefined
    const len = buf[at]!
    if (len === 0) { at++; wireBytes++; break }
    if (len > 63) return undefined
    if (at + 1 + len > buf.length) return undefined
    wireBytes += 1 + len
    if (wireBytes + 1 > MAX_NAME_BYTES) return undefined
    labels.push(buf.toString('latin1', at + 1, at + 1 + len))
    at += 1 + len
  }
  return { labels, end: at }
}

/** Reads a possibly compressed name (answers), following pointers backwards only. */
function readName(buf: Buffer, offset: number): NameRead | undefined {
  const labels: string[] = []
  let at = offset
  let end = -1
  let jumps = 0
  let wireBytes = 0
  for (;;) {
    if (at >= buf.length) return undefined
    const len = buf[at]!
    if ((len & 0xc0) === 0xc0) {
      if (at + 1 >= buf.length) return undefined
      const target = ((len & 0x3f) << 8) | buf[at + 1]!
      if (end < 0) end = at + 2
      // Pointers must point backwards, which also bounds the loop.
      if (target >= at || ++jumps > 64) return undefined
      at = target
      continue
    }
    if (len > 63) return undefined
    if (len === 0) { if (end < 0) end = at + 1; break }
    if (at + 1 + len > buf.length) return undefined
    wireBytes += 1 + len
    if (wireBytes + 1 > MAX_NAME_BYTES) return undefined
    labels.push(buf.toString('latin1', at + 1, at + 1 + len))
    at += 1 + len
  }
  return { labels, end }
}

/** Lower-cases ASCII letters only (RFC 4343: DNS case-insensitivity is ASCII-only). */
export function asciiLower(text: string): string {
  return text.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32))
}

/** Skips one resource record; returns its type, class, ttl and rdata bounds. */
function readRecordHeader(buf: Buffer, offset: number): { name: string[]; type: number; klass: number; ttl: number; rdataStart: number; rdataEnd: number } | undefined {
  const name = readName(buf, offset)
  if (!name) return undefined
  const at = name.end
  if (at + 10 > buf.length) return undefined
  const rdlength = buf.readUInt16BE(at + 8)
  if (at + 10 + rdlength > buf.length) return undefined
  return { name: name.labels, type: buf.readUInt16BE(at), klass: buf.readUInt16BE(at + 2), ttl: buf.readUInt32BE(at + 4), rdataStart: at + 10, rdataEnd: at + 10 + rdlength }
}

export function parseQuery(buf: Buffer): QueryParse {
  if (buf.length < HEADER_BYTES) return { kind: 'drop' }
  const id = buf.readUInt16BE(0)
  const flags = buf.readUInt16BE(2)
  if (flags & 0x8000) return { kind: 'drop' }
  const opcode = (flags >> 11) & 0xf
  const rd = (flags & 0x0100) !== 0
  const cd = (flags & 0x0010) !== 0
  if (opcode !== 0) return { kind: 'error', id, rd, rcode: RCODE.NOTIMP, opcode }
  const qdcount = buf.readUInt16BE(4)
  if (qdcount !== 1) return { kind: 'error', id, rd, rcode: RCODE.FORMERR, opcode }
  const name = readQuestionName(buf, HEADER_BYTES)
  if (!name || name.end + 4 > buf.length) return { kind: 'error', id, rd, rcode: RCODE.FORMERR, opcode }
  const qtype = buf.readUInt16BE(name.end)
  const qclass = buf.readUInt16BE(name.end + 2)
  const questionEnd = name.end + 4
  const query: DnsQuery = {
    id, rd, cd, labels: name.labels.map(asciiLower), name: asciiLower(name.labels.join('.')), qtype, qclass,
    questionBytes: Buffer.from(buf.subarray(HEADER_BYTES, questionEnd)),
  }
  // EDNS: an OPT record in the additional section (skipping any answer/authority records a
  // client had no reason to send). A malformed tail only costs the client EDNS.
  const others = buf.readUInt16BE(6) + buf.readUInt16BE(8) + buf.readUInt16BE(10)
  let at = questionEnd
  for (let i = 0; i < others && i < 64; i++) {
    const record = readRecordHeader(buf, at)
    if (!record) break
    if (record.type === DNS_TYPE.OPT && record.name.length === 0) query.ednsUdpSize = Math.max(record.klass, CLASSIC_UDP_BYTES)
    at = record.rdataEnd
  }
  return { kind: 'query', query }
}

/** One answer record. `owner: 'question'` points at the question's name (0xC00C), keeping the
 * client's case; otherwise labels are written out. */
export interface DnsRecord {
  owner: 'question' | string[]
  type: number
  ttl: number
  rdata: Buffer
}

export interface DnsResponse {
  rcode: Rcode
  /** Authoritative (`.internal` answers) vs forwarded/refused. */
  authoritative: boolean
  recursionAvailable: boolean
  answers: DnsRecord[]
  authority: DnsRecord[]
}

export function encodeName(labels: string[]): Buffer {
  const parts: Buffer[] = []
  for (const label of labels) {
    const bytes = Buffer.from(label, 'latin1')
    parts.push(Buffer.from([bytes.length]), bytes)
  }
  parts.push(Buffer.from([0]))
  return Buffer.concat(parts)
}

function encodeRecord(record: DnsRecord): Buffer {
  const owner = record.owner === 'question' ? Buffer.from([0xc0, HEADER_BYTES]) : encodeName(record.owner)
  const fixed = Buffer.alloc(10)
  fixed.writeUInt16BE(record.type, 0)
  fixed.writeUInt16BE(DNS_CLASS_IN, 2)
  fixed.writeUInt32BE(record.ttl >>> 0, 4)
  fixed.writeUInt16BE(record.rdata.length, 8)
  return Buffer.concat([owner, fixed, record.rdata])
}

/** The OPT pseudo-record Hangar answers EDNS clients with (RFC 6891 §6.1.2). */
function optRecord(): Buffer {
  const opt = Buffer.alloc(11)
  opt[0] = 0
  opt.writeUInt16BE(DNS_TYPE.OPT, 1)
  opt.writeUInt16BE(EDNS_UDP_BYTES, 3)
  return opt
}

function header(id: number, flags: number, counts: [number, number, number, number]): Buffer {
  const out = Buffer.alloc(HEADER_BYTES)
  out.writeUInt16BE(id, 0)
  out.writeUInt16BE(flags, 2)
  counts.forEach((count, i) => out.writeUInt16BE(count, 4 + 2 * i))
  return out
}

/** The answer to `query`, within `maxBytes`: records that do not fit are left out and TC is set
 * (RFC 2181 §9), so a UDP client knows to retry over TCP. */
export function encodeResponse(query: DnsQuery, response: DnsResponse, maxBytes: number): Buffer {
  const opt = query.ednsUdpSize !== undefined ? optRecord() : undefined
  let size = HEADER_BYTES + query.questionBytes.length + (opt?.length ?? 0)
  const answers: Buffer[] = []
  let truncated = false
  for (const record of response.answers) {
    const bytes = encodeRecord(record)
    if (size + bytes.length > maxBytes) { truncated = true; break }
    answers.push(bytes); size += bytes.length
  }
  const authority: Buffer[] = []
  if (!truncated) {
    for (const record of response.authority) {
      const bytes = encodeRecord(record)
      if (size + bytes.length > maxBytes) break
      authority.push(bytes); size += bytes.length
    }
  }
  const flags = 0x8000 | (response.authoritative ? 0x0400 : 0) | (truncated ? 0x0200 : 0) | (query.rd ? 0x0100 : 0)
    | (response.recursionAvailable ? 0x0080 : 0) | (query.cd ? 0x0010 : 0) | response.rcode
  return Buffer.concat([header(query.id, flags, [1, answers.length, authority.length, opt ? 1 : 0]), query.questionBytes, ...answers, ...authority, ...(opt ? [opt] : [])])
}

/** An error answer to a packet whose question could not be used (FORMERR, NOTIMP): the header
 * alone, as the question is not trusted. */
export function encodeErrorResponse(id: number, rd: boolean, rcode: Rcode, opcode = 0): Buffer {
  return header(id, 0x8000 | ((opcode & 0xf) << 11) | (rd ? 0x0100 : 0) | rcode, [0, 0, 0, 0])
}

/** The largest answer a client can take: 512 bytes unless it offered more over EDNS (capped at
 * Hangar's own offer); TCP answers may use the whole 16-bit length. */
export function responseLimit(query: DnsQuery, transport: 'udp' | 'tcp'): number {
  if (transport === 'tcp') return 65_535
  return query.ednsUdpSize === undefined ? CLASSIC_UDP_BYTES : Math.min(Math.max(query.ednsUdpSize, CLASSIC_UDP_BYTES), EDNS_UDP_BYTES)
}

// ── records ──

/** TXT rdata: character-strings of at most 255 bytes (RFC 1035 §3.3.14); longer text is split
 * across strings of one record, which clients join. */
export function txtRdata(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8')
  const parts: Buffer[] = []
  for (let at = 0; at < bytes.length || parts.length === 0; at += 255) {
    const chunk = bytes.subarray(at, at + 255)
    parts.push(Buffer.from([chunk.length]), chunk)
  }
  return Buffer.concat(parts)
}

export function soaRdata(zone: string[], serial: number, minimumTtl: number): Buffer {
  const times = Buffer.alloc(20)
  times.writeUInt32BE(serial >>> 0, 0)
  times.writeUInt32BE(3600, 4)
  times.writeUInt32BE(600, 8)
  times.writeUInt32BE(86400, 12)
  times.writeUInt32BE(minimumTtl, 16)
  return Buffer.concat([encodeName(['ns', ...zone]), encodeName(['hostmaster', ...zone]), times])
}

// ── addresses ──

/** The 16 bytes of an IPv6 address in any textual form (`::`, embedded IPv4), or undefined. */
export function parseIpv6(text: string): Buffer | undefined {
  // The text rules live with the mesh's address code (wireguard-plan.ts); DNS wants the 16 bytes.
  const address = text.includes('%') ? text.slice(0, text.indexOf('%')) : text
  if (!isIPv6(address)) return undefined
  return Buffer.from(parseIpv6Value(address).toString(16).padStart(32, '0'), 'hex')
}

export function parseIpv4(text: string): Buffer | undefined {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text)
  if (!match) return undefined
  const octets = match.slice(1).map(Number)
  if (octets.some((o) => o > 255)) return undefined
  return Buffer.from(octets)
}

/** RFC 5952 text: lower case, leading zeros dropped, the longest run of two or more zero groups
 * as `::`. */
export function formatIpv6(bytes: Buffer): string {
  return formatIpv6Value(BigInt(`0x${bytes.subarray(0, 16).toString('hex')}`))
}

// ── reading answers (the forwarder's checks, queryDns, tests) ──

export interface DecodedRecord {
  name: string
  type: number
  ttl: number
  rdata: Buffer
  /** AAAA and A as text; TXT as its joined character-strings. */
  address?: string
  text?: string
}

export interface DecodedResponse {
  id: number
  rcode: number
  authoritative: boolean
  truncated: boolean
  recursionAvailable: boolean
  question?: { name: string; qtype: number }
  answers: DecodedRecord[]
  authority: DecodedRecord[]
  additional: DecodedRecord[]
}

function decodeTxt(rdata: Buffer): string | undefined {
  const parts: Buffer[] = []
  for (let at = 0; at < rdata.length;) {
    const len = rdata[at]!
    if (at + 1 + len > rdata.length) return undefined
    parts.push(rdata.subarray(at + 1, at + 1 + len))
    at += 1 + len
  }
  return Buffer.concat(parts).toString('utf8')
}

/** Reads a DNS response; undefined when it is not one. */
export function parseResponse(buf: Buffer): DecodedResponse | undefined {
  if (buf.length < HEADER_BYTES) return undefined
  const flags = buf.readUInt16BE(2)
  if (!(flags & 0x8000)) return undefined
  const counts = [4, 6, 8, 10].map((o) => buf.readUInt16BE(o))
  let at = HEADER_BYTES
  const out: DecodedResponse = {
    id: buf.readUInt16BE(0), rcode: flags & 0xf, authoritative: (flags & 0x0400) !== 0, truncated: (flags & 0x0200) !== 0,
    recursionAvailable: (flags & 0x0080) !== 0, answers: [], authority: [], additional: [],
  }
  for (let i = 0; i < counts[0]!; i++) {
    const name = readName(buf, at)
    if (!name || name.end + 4 > buf.length) return undefined
    if (i === 0) out.question = { name: name.labels.join('.'), qtype: buf.readUInt16BE(name.end) }
    at = name.end + 4
  }
  const sections = [out.answers, out.authority, out.additional]
  for (let s = 0; s < 3; s++) {
    for (let i = 0; i < counts[s + 1]!; i++) {
      const record = readRecordHeader(buf, at)
      if (!record) return undefined
      const rdata = Buffer.from(buf.subarray(record.rdataStart, record.rdataEnd))
      const decoded: DecodedRecord = { name: record.name.join('.'), type: record.type, ttl: record.ttl, rdata }
      if (record.type === DNS_TYPE.AAAA && rdata.length === 16) decoded.address = formatIpv6(rdata)
      if (record.type === DNS_TYPE.A && rdata.length === 4) decoded.address = [...rdata].join('.')
      if (record.type === DNS_TYPE.TXT) decoded.text = decodeTxt(rdata)
      sections[s]!.push(decoded)
      at = record.rdataEnd
    }
  }
  return out
}

/** A query packet (the client side: queryDns, tests, the forwarder's health). */
export function encodeQuery(id: number, name: string, qtype: number, options: { rd?: boolean; ednsUdpSize?: number } = {}): Buffer {
  const labels = name.replace(/\.$/, '').split('.').filter((l) => l.length > 0)
  const question = Buffer.concat([encodeName(labels), Buffer.from([qtype >> 8, qtype & 0xff, 0, DNS_CLASS_IN])])
  const opt = options.ednsUdpSize !== undefined ? (() => { const o = Buffer.alloc(11); o.writeUInt16BE(DNS_TYPE.OPT, 1); o.writeUInt16BE(options.ednsUdpSize!, 3); return o })() : undefined
  return Buffer.concat([header(id, (options.rd ?? true) ? 0x0100 : 0, [1, 0, 0, opt ? 1 : 0]), question, ...(opt ? [opt] : [])])
}
