import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidArgumentError, NotFoundError, PayloadTooLargeError, HEADERS, toErrorEnvelope, type Logger } from '../core/index.js'

// A small router over node:http. Every response carries `fly-request-id` (reference §1.1); every
// error leaves through `toErrorEnvelope` (CONVENTIONS §4), so handlers only throw typed errors.

export interface RequestContext {
  req: IncomingMessage
  params: Record<string, string>
  query: URLSearchParams
  requestId: string
  /** The parsed JSON body ({} when empty). */
  body(): Promise<unknown>
  header(name: string): string | undefined
}

export interface Reply {
  status: number
  body?: unknown
  headers?: Record<string, string>
}

/** A reply that writes the response itself (streams such as `logs?follow=true`). */
export interface StreamReply { stream: (res: ServerResponse) => void }

export type Handler = (ctx: RequestContext) => Promise<Reply | StreamReply | unknown>

interface Route {
  method: string
  segments: string[]
  handler: Handler
}

export class Router {
  private readonly routes: Route[] = []

  add(method: string, pattern: string, handler: Handler): this {
    this.routes.push({ method, segments: pattern.split('/').filter(Boolean), handler })
    return this
  }

  match(method: string, path: string): { handler: Handler; params: Record<string, string> } | { allowed: string[] } | undefined {
    const parts = path.split('/').filter(Boolean)
    const allowed: string[] = []
    for (const route of this.routes) {
      if (route.segments.length !== parts.length) continue
      const params: Record<string, string> = {}
      let ok = true
      for (let i = 0; i < parts.length; i++) {
        const segment = route.segments[i]!
        if (segment.startsWith(':')) {
          try { params[segment.slice(1)] = decodeURIComponent(parts[i]!) } catch { ok = false; break }
        } else if (segment !== parts[i]) { ok = false; break }
      }
      if (!ok) continue
      if (route.method === method) return { handler: route.handler, params }
      allowed.push(route.method)
    }
    return allowed.length ? { allowed } : undefined
  }
}

export const isReply = (value: unknown): value is Reply =>
  typeof value === 'object' && value !== null && 'status' in value && typeof (value as Reply).status === 'number' && Object.keys(value).every((k) => k === 'status' || k === 'body' || k === 'headers')

export async function readJsonBody(req: IncomingMessage, limitBytes: number): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > limitBytes) {
    req.resume()
    throw new PayloadTooLargeError(limitBytes)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > limitBytes) {
      req.resume()
      throw new PayloadTooLargeError(limitBytes)
    }
    chunks.push(chunk as Buffer)
  }
  if (size === 0) return {}
  const text = Buffer.concat(chunks).toString('utf8')
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new InvalidArgumentError(`request body is not valid JSON: ${(err as Error).message}`)
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) { res.end(); return }
  const payload = body === undefined || status === 204 ? '' : JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(payload), ...headers })
  res.end(payload)
}

export function createRequestListener(router: Router, options: { bodyLimitBytes: number; newRequestId: () => string; logger: Logger; region: string }) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const requestId = options.newRequestId()
    res.setHeader(HEADERS.requestId, requestId)
    res.setHeader('server', 'hangar')
    void (async () => {
      let status = 500
      const started = Date.now()
      let url: URL
      try {
        url = new URL(req.url ?? '/', 'http://api.local')
      } catch {
        url = new URL('http://api.local/')
      }
      try {
        const matched = router.match(req.method ?? 'GET', url.pathname)
        if (!matched) throw new NotFoundError(`route ${req.method} ${url.pathname.slice(0, 200)}`)
        if ('allowed' in matched) {
          status = 405
          sendJson(res, 405, { error: `method ${req.method} not allowed on ${url.pathname.slice(0, 200)} (allowed: ${matched.allowed.join(', ')})`, status: 'unknown', code: 'invalid_argument' }, { allow: matched.allowed.join(', ') })
          return
        }
        let bodyPromise: Promise<unknown> | undefined
        const ctx: RequestContext = {
          req, params: matched.params, query: url.searchParams, requestId,
          body: () => (bodyPromise ??= readJsonBody(req, options.bodyLimitBytes)),
          header: (name) => {
            const value = req.headers[name.toLowerCase()]
            return Array.isArray(value) ? value[0] : value
          },
        }
        const result = await matched.handler(ctx)
        if (!bodyPromise) req.resume()
        if (typeof result === 'object' && result !== null && typeof (result as StreamReply).stream === 'function') {
          status = 200
          ;(result as StreamReply).stream(res)
          return
        }
        const reply: Reply = isReply(result) ? result : { status: 200, body: result }
        status = reply.status
        sendJson(res, reply.status, reply.body, reply.headers)
      } catch (err) {
        const envelope = toErrorEnvelope(err)
        status = envelope.httpStatus
        if (status >= 500) options.logger.error('request failed', { method: req.method, path: url.pathname, requestId, err })
        req.resume()
        sendJson(res, envelope.httpStatus, envelope.body)
      } finally {
        options.logger.debug('request', { method: req.method, path: url.pathname, status, ms: Date.now() - started, requestId })
      }
    })()
  }
}
