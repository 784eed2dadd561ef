import type { App, CreateMachineRequest, ExecResponse, Machine, MachineEvent, UpdateMachineRequest, WaitResponse, LogLine } from '../core/index.js'

// The CLI's client for the Machines API, typed by the same wire types the server uses
// (CONVENTIONS §3: the CLI and the server cannot drift).

export class ApiError extends Error {
  /** `code` is Hangar's stable error code (the envelope's `code`), e.g. not_found, illegal_state. */
  constructor(readonly status: number, readonly code: string | undefined, message: string) {
    super(message)
    this.name = 'ApiError'
  }
}

export class ApiClient {
  constructor(private readonly baseUrl: string, private readonly token: string) {}

  /** reference §1.1: fly-go sends `FlyV1 fm2_…,fm2_…` for macaroons (several may be comma-joined,
   * e.g. HANGAR_API_TOKEN="fm2_a,fm2_b") and `Bearer` for anything else. */
  get authorization(): string {
    return this.token.startsWith('fm2_') ? `FlyV1 ${this.token}` : `Bearer ${this.token}`
  }

  async request<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    let res: Response
    try {
      res = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: { authorization: this.authorization, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      })
    } catch (err) {
      throw new ApiError(0, 'unavailable', `cannot reach the Hangar API at ${this.baseUrl}: ${(err as Error).cause ? ((err as Error).cause as Error).message : (err as Error).message}`)
    }
    const text = await res.text()
    let parsed: unknown
    try { parsed = text ? JSON.parse(text) : undefined } catch { parsed = text }
    if (!res.ok) {
      const envelope = parsed as { error?: string; code?: string } | undefined
      throw new ApiError(res.status, envelope?.code, envelope?.error ?? `HTTP ${res.status}`)
    }
    return parsed as T
  }

  listApps(org?: string) { return this.request<{ apps: App[]; total_apps: number }>('GET', `/v1/apps${org ? `?org_slug=${encodeURIComponent(org)}` : ''}`) }
  createApp(name: string, org?: string) { return this.request<App>('POST', '/v1/apps', { app_name: name, ...(org ? { org_slug: org } : {}) }) }
  getApp(name: string) { return this.request<App>('GET', `/v1/apps/${encodeURIComponent(name)}`) }
  deleteApp(name: string) { return this.request<unknown>('DELETE', `/v1/apps/${encodeURIComponent(name)}`) }

  private machinePath(app: string, id?: string, suffix = '') {
    return `/v1/apps/${encodeURIComponent(app)}/machines${id ? `/${encodeURIComponent(id)}` : ''}${suffix}`
  }
  listMachines(app: string, query = '') { return this.request<Machine[]>('GET', this.machinePath(app) + query) }
  createMachine(app: string, request: CreateMachineRequest) { return this.request<Machine>('POST', this.machinePath(app), request) }
  getMachine(app: string, id: string) { return this.request<Machine>('GET', this.machinePath(app, id)) }
  updateMachine(app: string, id: string, request: UpdateMachineRequest) { return this.request<Machine>('POST', this.machinePath(app, id), request) }
  destroyMachine(app: string, id: string, force: boolean) { return this.request<unknown>('DELETE', this.machinePath(app, id, force ? '?force=true' : '')) }
  startMachine(app: string, id: string) { return this.request<unknown>('POST', this.machinePath(app, id, '/start')) }
  stopMachine(app: string, id: string, body: { signal?: string; timeout?: string }) { return this.request<unknown>('POST', this.machinePath(app, id, '/stop'), body) }
  suspendMachine(app: string, id: string) { return this.request<unknown>('POST', this.machinePath(app, id, '/suspend')) }
  restartMachine(app: string, id: string, query = '') { return this.request<unknown>('POST', this.machinePath(app, id, `/restart${query}`)) }
  execMachine(app: string, id: string, command: string[], timeout?: number) { return this.request<ExecResponse>('POST', this.machinePath(app, id, '/exec'), { command, ...(timeout ? { timeout } : {}) }) }
  waitMachine(app: string, id: string, state: string, timeoutSeconds: number, version?: string) {
    return this.request<WaitResponse>('GET', this.machinePath(app, id, `/wait?state=${encodeURIComponent(state)}&timeout=${timeoutSeconds}${version ? `&version=${encodeURIComponent(version)}` : ''}`))
  }
  events(app: string, id: string) { return this.request<MachineEvent[]>('GET', this.machinePath(app, id, '/events')) }

  /** Streams an app's log lines as NDJSON until `signal` aborts. */
  async streamLogs(app: string, onLine: (line: LogLine) => void, signal?: AbortSignal): Promise<void> {
    const res = await fetch(`${this.baseUrl}/v1/apps/${encodeURIComponent(app)}/logs?follow=true`, { headers: { authorization: this.authorization }, signal })
    if (!res.ok || !res.body) {
      const envelope = await res.json().catch(() => ({})) as { error?: string; code?: string }
      throw new ApiError(res.status, envelope.code, envelope.error ?? `HTTP ${res.status}`)
    }
    const decoder = new TextDecoder()
    let buffered = ''
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffered += decoder.decode(chunk, { stream: true })
      let newline: number
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const text = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        if (text.trim()) onLine(JSON.parse(text) as LogLine)
      }
    }
  }
}
