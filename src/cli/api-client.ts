import type { App, CreateMachineRequest, ExecResponse, Machine, MachineEvent, UpdateMachineRequest, WaitResponse, LogLine } from '../core/index.js'

// The CLI's client for the Machines API, typed by the same wire types the server uses
// (CONVENTIONS §3: the CLI and the server cannot drift).

export interface OrgView { slug: string; name: string; network: number; created_at: string; members: number }
export interface CreatedToken { token: string; id: string; kind: string; org_slug: string; app_name?: string; machine_id?: string; expires_at: string }
export interface IssuedTokenView { id: string; kind: string; org_slug: string; name: string; created_at: string; expires_at: string; app_name?: string; machine_id?: string; member?: string; revoked: boolean; revoked_at?: string }
export interface SecretView { name: string; digest: string; created_at: string; updated_at: string }
export interface ReleaseView { id: string; app: string; version: number; image: string; status: 'pending' | 'running' | 'complete' | 'failed' | 'rolled_back'; strategy: string; description: string; error?: string; created_at: string; updated_at: string }

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
    for (let attempt = 0; ; attempt++) {
      try {
        res = await fetch(`${this.baseUrl}${path}`, {
          method,
          headers: { authorization: this.authorization, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
          body: body === undefined ? undefined : JSON.stringify(body),
        })
        break
      } catch (err) {
        // reference §1.9: like fly-go, a GET is retried (twice, with backoff) when the connection
        // was reset — typically a kept-alive socket the server closed as the request went out.
        const code = ((err as Error).cause as { code?: string } | undefined)?.code
        if (method === 'GET' && attempt < 2 && (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET')) {
          await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** attempt))
          continue
        }
        throw new ApiError(0, 'unavailable', `cannot reach the Hangar API at ${this.baseUrl}: ${(err as Error).cause ? ((err as Error).cause as Error).message : (err as Error).message}`)
      }
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
  cordonMachine(app: string, id: string) { return this.request<unknown>('POST', this.machinePath(app, id, '/cordon')) }
  uncordonMachine(app: string, id: string) { return this.request<unknown>('POST', this.machinePath(app, id, '/uncordon')) }
  setMetadata(app: string, id: string, key: string, value: string) { return this.request<unknown>('POST', this.machinePath(app, id, `/metadata/${encodeURIComponent(key)}`), { value }) }

  platformRegions() { return this.request<{ nearest: string; regions: Array<{ code: string }> }>('GET', '/v1/platform/regions') }

  // ── orgs, tokens, secrets, releases (issue 5) ──
  listOrgs() { return this.request<{ orgs: OrgView[] }>('GET', '/v1/orgs') }
  createOrg(slug: string, options: { name?: string; member?: string } = {}) { return this.request<OrgView & { token: string; token_id: string; expires_at: string }>('POST', '/v1/orgs', { slug, ...options }) }
  listMembers(org: string) { return this.request<{ members: Array<{ name: string; role: string; created_at: string }> }>('GET', `/v1/orgs/${encodeURIComponent(org)}/members`) }
  addMember(org: string, name: string, role?: string) { return this.request<{ name: string; role: string; token: string; token_id: string; expires_at: string }>('POST', `/v1/orgs/${encodeURIComponent(org)}/members`, { name, ...(role ? { role } : {}) }) }
  removeMember(org: string, name: string) { return this.request<{ removed: string; revoked_tokens: number }>('DELETE', `/v1/orgs/${encodeURIComponent(org)}/members/${encodeURIComponent(name)}`) }
  createToken(request: { kind: string; org_slug?: string; app_name?: string; machine_id?: string; commands?: string[][]; expiry?: string; name?: string }) {
    return this.request<CreatedToken>('POST', '/v1/tokens', request)
  }
  listTokens(org?: string) { return this.request<{ tokens: IssuedTokenView[] }>('GET', `/v1/tokens${org ? `?org_slug=${encodeURIComponent(org)}` : ''}`) }
  revokeToken(target: { token_id?: string; token?: string }) { return this.request<{ revoked: string; org_slug: string; nodes: string[] }>('POST', '/v1/tokens/revoke', target) }
  currentTokens() { return this.request<{ tokens: Array<{ token_id?: string; org_slug: string; organization: string; apps: string[]; restricted_to_machine?: string }> }>('GET', '/v1/tokens/current') }
  listSecrets(app: string) { return this.request<{ secrets: SecretView[]; version: number }>('GET', `/v1/apps/${encodeURIComponent(app)}/secrets`) }
  updateSecrets(app: string, values: Record<string, string | null>) { return this.request<{ secrets: SecretView[]; version: number }>('POST', `/v1/apps/${encodeURIComponent(app)}/secrets`, { values }) }
  listReleases(app: string, limit?: number) { return this.request<{ releases: ReleaseView[] }>('GET', `/v1/apps/${encodeURIComponent(app)}/releases${limit ? `?limit=${limit}` : ''}`) }
  createRelease(app: string, body: { image: string; strategy: string; description?: string }) { return this.request<ReleaseView>('POST', `/v1/apps/${encodeURIComponent(app)}/releases`, body) }
  updateRelease(app: string, id: string, body: { status: ReleaseView['status']; error?: string }) { return this.request<ReleaseView>('PATCH', `/v1/apps/${encodeURIComponent(app)}/releases/${encodeURIComponent(id)}`, body) }

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
