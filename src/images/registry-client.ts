import { Agent, type Dispatcher } from 'undici'
import type { Readable } from 'node:stream'
import { UnavailableError, silentLogger, type Logger } from '../core/index.js'
import { ImagePullError } from './errors.js'
import { parseAuthChallenges, type AuthChallenge } from './auth-challenge.js'
import { SingleFlight } from './single-flight.js'
import { isLoopbackRegistry, registryApiHost, registryHostname, type ImageReference } from './reference.js'
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from './manifest.js'

// The registry HTTP API (OCI distribution-spec "Pull"), with the three ways registries let you in:
//  - anonymous;
//  - HTTP Basic (distribution's `auth: htpasswd`): `401 WWW-Authenticate: Basic realm=…`;
//  - bearer tokens (Docker Hub, distribution's `auth: token`): `401 WWW-Authenticate: Bearer
//    realm=…,service=…,scope=…`, then `GET realm?service=…&scope=repository:<name>:pull` (with Basic
//    credentials when we have some) returns `{"token"|"access_token", "expires_in"}` (distribution
//    docs/spec/auth/token.md; expires_in defaults to 60 s).
// What a registry asked for is remembered per registry and tokens per scope, so after the first
// request every later one goes out already authorised: a cached pull by tag costs one HEAD.
// Credentials and tokens never appear in an error message or a log line.

export interface RegistryCredentials {
  username: string
  password: string
}

/** Returns the credentials for a registry ('docker.io', '127.0.0.1:5000'), or undefined for anonymous. */
export type CredentialsProvider = (registry: string) => RegistryCredentials | undefined

export interface RegistryClientOptions {
  /** Registries ('host:port' or 'host') spoken to over plain HTTP besides loopback ones. */
  insecureRegistries?: string[]
  credentials?: CredentialsProvider
  logger?: Logger
  userAgent?: string
}

/** What a request is for, so errors can name the image the caller asked for. */
export interface PullTarget {
  reference: ImageReference
  /** The reference as the caller wrote it (normalised), used in messages. */
  display: string
}

export interface ManifestResponse {
  bytes: Buffer
  contentType: string | undefined
  /** `Docker-Content-Digest`, when the registry sent one. */
  digestHeader: string | undefined
}

export interface BlobResponse {
  body: Readable
  contentLength: number | undefined
}

interface CachedToken {
  token: string
  expiresAt: number
}

type SentAuthorization = 'none' | 'basic' | 'cached-bearer' | 'fresh-bearer'

const RETRYABLE_STATUS = new Set([429, 500, 502, 503, 504])
const MAX_ATTEMPTS = 3
const MAX_REDIRECTS = 5
const MAX_ERROR_BODY = 64 * 1024
const DEFAULT_TOKEN_LIFETIME_S = 60

export class RegistryClient {
  private readonly agent: Agent
  private readonly insecure: Set<string>
  private readonly credentials: CredentialsProvider
  private readonly logger: Logger
  private readonly userAgent: string
  /** What each registry answered its first 401 with. */
  private readonly challenges = new Map<string, AuthChallenge>()
  private readonly tokens = new Map<string, CachedToken>()
  private readonly tokenFlights = new SingleFlight<CachedToken>()
  private closed = false

  constructor(options: RegistryClientOptions = {}) {
    this.insecure = new Set((options.insecureRegistries ?? []).map((r) => r.toLowerCase()))
    this.credentials = options.credentials ?? (() => undefined)
    this.logger = options.logger ?? silentLogger
    this.userAgent = options.userAgent ?? 'hangar-images/0.1'
    this.agent = new Agent({ connections: 16, connectTimeout: 10_000, headersTimeout: 30_000, bodyTimeout: 120_000, keepAliveTimeout: 30_000 })
  }

  /** `HEAD /v2/<name>/manifests/<reference>` → the digest the registry says the reference names. */
  async headManifest(target: PullTarget, reference: string, signal?: AbortSignal): Promise<{ digest: string | undefined }> {
    const res = await this.send(target, 'HEAD', `/manifests/${reference}`, MANIFEST_ACCEPT, signal)
    await res.body.dump()
    if (res.statusCode === 200) return { digest: headerValue(res.headers['docker-content-digest']) }
    throw await this.failure(target, res, 'manifest', reference)
  }

  async getManifest(target: PullTarget, reference: string, signal?: AbortSignal): Promise<ManifestResponse> {
    const res = await this.send(target, 'GET', `/manifests/${reference}`, MANIFEST_ACCEPT, signal)
    if (res.statusCode !== 200) throw await this.failure(target, res, 'manifest', reference)
    const length = Number(headerValue(res.headers['content-length']) ?? NaN)
    if (length > MAX_MANIFEST_BYTES) {
      res.body.destroy()
      throw new ImagePullError('invalid_image', `image "${target.display}": manifest ${reference} is ${length} bytes, more than the ${MAX_MANIFEST_BYTES} Hangar accepts`)
    }
    const bytes = await readLimited(res.body, MAX_MANIFEST_BYTES, () => new ImagePullError('invalid_image', `image "${target.display}": manifest ${reference} is larger than ${MAX_MANIFEST_BYTES} bytes`))
    return { bytes, contentType: headerValue(res.headers['content-type']), digestHeader: headerValue(res.headers['docker-content-digest']) }
  }

  /** `GET /v2/<name>/blobs/<digest>`, following redirects to a blob store. The caller consumes the body. */
  async getBlob(target: PullTarget, digest: string, signal?: AbortSignal): Promise<BlobResponse> {
    const res = await this.send(target, 'GET', `/blobs/${digest}`, undefined, signal)
    if (res.statusCode !== 200) throw await this.failure(target, res, 'blob', digest)
    const length = headerValue(res.headers['content-length'])
    return { body: res.body, contentLength: length === undefined ? undefined : Number(length) }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.agent.close()
  }

  private baseUrl(registry: string): URL {
    const plainHttp = isLoopbackRegistry(registry) || this.insecure.has(registry.toLowerCase()) || this.insecure.has(registryHostname(registry))
    return new URL(`${plainHttp ? 'http' : 'https'}://${registryApiHost(registry)}`)
  }

  /** Sends a request with whatever authorisation the registry wants, retrying transient failures. */
  private async send(target: PullTarget, method: 'GET' | 'HEAD', pathSuffix: string, accept: string | undefined, signal: AbortSignal | undefined): Promise<Dispatcher.ResponseData> {
    const { registry, repository } = target.reference
    const url = new URL(`/v2/${repository}${pathSuffix}`, this.baseUrl(registry))
    let forceFreshToken = false
    for (let attempt = 1; ; attempt++) {
      const { header, sent } = await this.authorization(target, forceFreshToken, signal)
      let res: Dispatcher.ResponseData
      try {
        res = await this.requestFollowingRedirects(url, method, accept, header, signal)
      } catch (err) {
        if (signal?.aborted) throw err
        if (attempt < MAX_ATTEMPTS) { await backoff(attempt, signal); continue }
        throw unreachable(registry, err)
      }
      this.logger.debug('registry request', { method, registry, path: url.pathname, status: res.statusCode })
      if (res.statusCode === 401) {
        await res.body.dump({ limit: MAX_ERROR_BODY })
        const challenge = pickChallenge(parseAuthChallenges(res.headers['www-authenticate']))
        if (!challenge) throw new ImagePullError('unauthorized', `image "${target.display}": registry ${registry} requires authentication with a scheme Hangar does not support`)
        this.challenges.set(registry, challenge)
        // A fresh token or a Basic password that was just refused will be refused again.
        if (sent === 'basic' || sent === 'fresh-bearer' || attempt >= MAX_ATTEMPTS) throw this.refused(target, challenge)
        if (challenge.scheme === 'basic' && !this.credentials(registry)) throw this.refused(target, challenge)
        forceFreshToken = true
        continue
      }
      if (RETRYABLE_STATUS.has(res.statusCode) && attempt < MAX_ATTEMPTS) {
        await res.body.dump({ limit: MAX_ERROR_BODY })
        await backoff(attempt, signal)
        continue
      }
      return res
    }
  }

  private refused(target: PullTarget, challenge: AuthChallenge): ImagePullError {
    const registry = target.reference.registry
    const hasCredentials = this.credentials(registry) !== undefined
    if (!hasCredentials) {
      return new ImagePullError('unauthorized', `image "${target.display}": registry ${registry} requires authentication (the repository does not exist or needs credentials, and none are configured for ${registry})`)
    }
    const detail = challenge.params.error ? ` (${challenge.params.error})` : ''
    return new ImagePullError('unauthorized', `image "${target.display}": registry ${registry} rejected the configured credentials${detail}`)
  }

  private async authorization(target: PullTarget, forceFreshToken: boolean, signal: AbortSignal | undefined): Promise<{ header: string | undefined; sent: SentAuthorization }> {
    const { registry, repository } = target.reference
    const challenge = this.challenges.get(registry)
    if (!challenge) return { header: undefined, sent: 'none' }
    const credentials = this.credentials(registry)
    if (challenge.scheme === 'basic') {
      return credentials ? { header: basicHeader(credentials), sent: 'basic' } : { header: undefined, sent: 'none' }
    }
    // Bearer: one token per (registry, scope); the challenge's own scope wins when it names one.
    const scope = challenge.params.scope && challenge.params.scope.includes(`:${repository}:`) ? challenge.params.scope : `repository:${repository}:pull`
    const key = `${registry} ${scope}`
    const cached = this.tokens.get(key)
    if (!forceFreshToken && cached && cached.expiresAt > Date.now()) return { header: `Bearer ${cached.token}`, sent: 'cached-bearer' }
    const fresh = await this.tokenFlights.run(key, () => this.fetchToken(target, challenge, scope, signal))
    this.tokens.set(key, fresh)
    return { header: `Bearer ${fresh.token}`, sent: 'fresh-bearer' }
  }

  private async fetchToken(target: PullTarget, challenge: AuthChallenge, scope: string, signal: AbortSignal | undefined): Promise<CachedToken> {
    const registry = target.reference.registry
    const realm = challenge.params.realm
    let url: URL
    try {
      url = new URL(realm ?? '')
    } catch {
      throw new ImagePullError('registry_error', `image "${target.display}": registry ${registry} sent a bearer challenge without a valid realm URL`)
    }
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service)
    for (const s of scope.split(' ')) url.searchParams.append('scope', s)
    const credentials = this.credentials(registry)
    // Never send a password in clear text to a token server that is neither HTTPS nor local/insecure.
    const mayCarryPassword = url.protocol === 'https:' || isLoopbackRegistry(url.host) || this.insecure.has(url.host.toLowerCase()) || this.insecure.has(url.hostname.toLowerCase())
    const header = credentials && mayCarryPassword ? basicHeader(credentials) : undefined
    let res: Dispatcher.ResponseData | undefined
    for (let attempt = 1; ; attempt++) {
      try {
        res = await this.requestFollowingRedirects(url, 'GET', 'application/json', header, signal)
      } catch (err) {
        if (signal?.aborted) throw err
        if (attempt < MAX_ATTEMPTS) { await backoff(attempt, signal); continue }
        throw new UnavailableError(`the token server of registry ${registry} (${url.host}) is not reachable: ${describeNetworkError(err)}`)
      }
      if (RETRYABLE_STATUS.has(res.statusCode) && attempt < MAX_ATTEMPTS) { await res.body.dump(); await backoff(attempt, signal); continue }
      break
    }
    if (res.statusCode === 401 || res.statusCode === 403) {
      await res.body.dump({ limit: MAX_ERROR_BODY })
      throw new ImagePullError('unauthorized', credentials
        ? `image "${target.display}": the token server of registry ${registry} rejected the configured credentials (HTTP ${res.statusCode})`
        : `image "${target.display}": the token server of registry ${registry} refused anonymous access (HTTP ${res.statusCode}); configure credentials for ${registry}`)
    }
    if (res.statusCode !== 200) {
      await res.body.dump({ limit: MAX_ERROR_BODY })
      if (res.statusCode >= 500) throw new UnavailableError(`the token server of registry ${registry} answered HTTP ${res.statusCode}`)
      throw new ImagePullError('registry_error', `image "${target.display}": the token server of registry ${registry} answered HTTP ${res.statusCode}`)
    }
    const body = await readLimited(res.body, MAX_ERROR_BODY, () => new ImagePullError('registry_error', `the token server of registry ${registry} sent an oversized answer`))
    let json: Record<string, unknown>
    try {
      json = JSON.parse(body.toString('utf8')) as Record<string, unknown>
    } catch {
      throw new ImagePullError('registry_error', `image "${target.display}": the token server of registry ${registry} sent an answer that is not JSON`)
    }
    const token = typeof json.token === 'string' && json.token !== '' ? json.token : typeof json.access_token === 'string' ? json.access_token : ''
    if (token === '') throw new ImagePullError('registry_error', `image "${target.display}": the token server of registry ${registry} sent no token`)
    const lifetime = typeof json.expires_in === 'number' && json.expires_in > 0 ? json.expires_in : DEFAULT_TOKEN_LIFETIME_S
    // Renew a little early so a token never expires between our check and the registry's.
    const margin = Math.min(10, lifetime / 4)
    return { token, expiresAt: Date.now() + (lifetime - margin) * 1000 }
  }

  private async requestFollowingRedirects(start: URL, method: 'GET' | 'HEAD', accept: string | undefined, authorization: string | undefined, signal: AbortSignal | undefined): Promise<Dispatcher.ResponseData> {
    let url = start
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': this.userAgent }
      if (accept) headers.accept = accept
      // A blob store behind a redirect gets a signed URL, never our registry credentials.
      if (authorization && url.origin === start.origin) headers.authorization = authorization
      const res = await this.agent.request({ origin: url.origin, path: url.pathname + url.search, method, headers, signal: signal ?? null })
      const location = headerValue(res.headers.location)
      if (res.statusCode >= 300 && res.statusCode < 400 && res.statusCode !== 304 && location) {
        await res.body.dump({ limit: MAX_ERROR_BODY })
        if (hop >= MAX_REDIRECTS) throw new Error(`more than ${MAX_REDIRECTS} redirects`)
        url = new URL(location, url)
        continue
      }
      return res
    }
  }

  /** Turns a non-2xx answer into a typed error naming the image (and reads the registry's error code). */
  private async failure(target: PullTarget, res: Dispatcher.ResponseData, kind: 'manifest' | 'blob', reference: string): Promise<Error> {
    const registry = target.reference.registry
    const detail = await registryErrorDetail(res)
    if (res.statusCode === 404) {
      return kind === 'manifest'
        ? new ImagePullError('not_found', `image "${target.display}" not found in registry`)
        : new ImagePullError('not_found', `image "${target.display}": blob ${reference} not found in registry`)
    }
    if (res.statusCode === 403) return new ImagePullError('unauthorized', `image "${target.display}": registry ${registry} denied access${detail}`)
    if (res.statusCode >= 500 || res.statusCode === 429) return new UnavailableError(`registry ${registry} answered HTTP ${res.statusCode} for ${kind} ${reference} of image "${target.display}"${detail}`)
    return new ImagePullError('registry_error', `image "${target.display}": registry ${registry} answered HTTP ${res.statusCode} for ${kind} ${reference}${detail}`)
  }
}

function pickChallenge(challenges: AuthChallenge[]): AuthChallenge | undefined {
  return challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic')
}

function basicHeader(credentials: RegistryCredentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}

/** The distribution-spec error body `{"errors":[{"code","message"}]}` as ": CODE message". */
async function registryErrorDetail(res: Dispatcher.ResponseData): Promise<string> {
  try {
    const body = await readLimited(res.body, MAX_ERROR_BODY, () => new Error('too large'))
    const json = JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: unknown; message?: unknown }> }
    const first = json.errors?.[0]
    if (first && typeof first.code === 'string') return `: ${first.code}${typeof first.message === 'string' ? ` ${first.message}` : ''}`
  } catch {
    // An empty (HEAD) or non-JSON body: the status says enough.
  }
  return ''
}

async function readLimited(body: Readable, limit: number, tooLarge: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of body) {
    total += (chunk as Buffer).length
    if (total > limit) { body.destroy(); throw tooLarge() }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

function describeNetworkError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown; cause?: { code?: unknown } }
  const code = typeof e?.code === 'string' ? e.code : typeof e?.cause?.code === 'string' ? e.cause.code : undefined
  const message = typeof e?.message === 'string' ? e.message : String(err)
  return code && !message.includes(code) ? `${code} ${message}` : message
}

function unreachable(registry: string, err: unknown): UnavailableError {
  return new UnavailableError(`registry ${registry} is not reachable: ${describeNetworkError(err)}`)
}

function backoff(attempt: number, signal: AbortSignal | undefined): Promise<void> {
  const ms = 100 * 3 ** (attempt - 1)
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve() }, ms)
    const onAbort = () => { clearTimeout(timer); reject(signal?.reason ?? new Error('aborted')) }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
