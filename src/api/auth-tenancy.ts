import { dirname } from 'node:path'
import type { Bus } from '../bus/index.js'
import { InvalidArgumentError, NameTakenError, NotFoundError, type Logger, silentLogger } from '../core/index.js'
import { mintToken, TokenVerifier, TOKEN_KINDS, type MintedToken, type TokenKind } from '../auth/index.js'
import type { ApiStore, OrgRow } from './api-store.js'
import { loadMasterKey } from './auth-master-key.js'
import { MacaroonAuth } from './auth-macaroon.js'
import { SharedRevocationList } from './auth-revocations.js'
import { SecretStore } from './auth-secret-store.js'
import { AuthStore, type MemberRole } from './auth-store.js'

// Everything the API holds per organization beyond apps (DESIGN "Who owns what": orgs, signing
// keys, secrets, token revocations): one object per API process, opened beside its store.

export const ORG_SLUG_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/

export interface IssueTokenOptions {
  org: string
  kind: TokenKind
  app?: string
  machine?: string
  commands?: ReadonlyArray<readonly string[]>
  /** ms or a duration such as "720h"; default 20 years (reference §6). */
  expiry?: number | string
  /** A label for listings. */
  name?: string
  /** The member the token is for: removing the member revokes it. */
  member?: string
}

export interface TenancyOptions {
  store: ApiStore
  /** `:memory:` or a file path: the master key is kept beside a file store. */
  dbPath: string
  bus?: Bus
  /** Names this API process in revocation acknowledgements. */
  node: string
  logger?: Logger
}

export class Tenancy {
  readonly keys: AuthStore
  readonly secrets: SecretStore
  readonly revocations: SharedRevocationList
  readonly verifier: TokenVerifier
  readonly auth: MacaroonAuth
  readonly #store: ApiStore
  #closed = false

  constructor(options: TenancyOptions) {
    const logger = options.logger ?? silentLogger
    const masterKey = loadMasterKey(options.dbPath === ':memory:' ? undefined : dirname(options.dbPath), logger)
    this.#store = options.store
    this.keys = new AuthStore(options.store.db, masterKey)
    this.secrets = new SecretStore(options.store.db, masterKey)
    masterKey.fill(0)
    this.revocations = new SharedRevocationList({ store: this.keys, bus: options.bus, node: options.node, logger })
    this.verifier = new TokenVerifier({ keys: this.keys, revocations: this.revocations })
    this.auth = new MacaroonAuth(this.verifier)
    options.store.onAppDeleted((app) => this.secrets.deleteApp(app))
    // Tools that make tokens through the store (the test kit, older callers) get macaroons too.
    options.store.setTokenIssuer((org, name) => this.issueToken({ org, kind: 'org', name }).token)
  }

  /** Makes an org with its signing key and first member; returns an org token for that member. */
  createOrg(slug: string, options: { name?: string; member?: string } = {}): { org: OrgRow; token: MintedToken } {
    if (typeof slug !== 'string' || !ORG_SLUG_PATTERN.test(slug)) throw new InvalidArgumentError(`organization slug ${JSON.stringify(String(slug).slice(0, 70))} must be lowercase letters, digits and dashes (at most 63 characters)`)
    if (this.#store.getOrg(slug)) throw new NameTakenError(`organization slug "${slug}" is already taken`)
    const org = this.#store.createOrg(slug, options.name ?? slug)
    this.keys.ensureOrgKey(slug)
    const member = options.member ?? 'owner'
    this.keys.addMember(slug, member, 'admin')
    return { org, token: this.issueToken({ org: slug, kind: 'org', name: `${member} (created ${slug})`, member }) }
  }

  /** Adds a member and issues their token: an org token for admins and members, a readonly
   * token for viewers. */
  addMember(org: string, name: string, role: MemberRole): MintedToken {
    if (!/^[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}$/.test(name)) throw new InvalidArgumentError(`member name ${JSON.stringify(name.slice(0, 80))} must be 1–128 letters, digits or @ . _ + -`)
    this.keys.addMember(org, name, role)
    return this.issueToken({ org, kind: role === 'viewer' ? 'readonly' : 'org', name: `member ${name}`, member: name })
  }

  /** Mints a token signed by the org's key and records its id and scope (never the token). */
  issueToken(options: IssueTokenOptions): MintedToken {
    if (!(TOKEN_KINDS as readonly string[]).includes(options.kind)) throw new InvalidArgumentError(`unknown token kind ${JSON.stringify(String(options.kind).slice(0, 40))}; use ${TOKEN_KINDS.join(', ')}`)
    if (!this.#store.getOrg(options.org)) throw new NotFoundError(`organization ${options.org.slice(0, 80)}`)
    const key = this.keys.ensureOrgKey(options.org)
    const minted = mintToken({ kind: options.kind, key, appId: options.app, machineId: options.machine, commands: options.commands, expiry: options.expiry })
    this.keys.recordIssued({
      id: minted.tokenId, org: options.org, kind: options.kind, app: options.app, machine: options.machine, member: options.member,
      name: options.name ?? `${options.kind} token`, createdAt: new Date().toISOString(), expiresAt: minted.expiresAt,
    })
    return minted
  }

  /** Revokes on every API node; returns the nodes that confirmed. */
  revoke(tokenId: string, org: string): Promise<string[]> {
    return this.revocations.revokeEverywhere(tokenId, org)
  }

  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.revocations.close()
  }
}
