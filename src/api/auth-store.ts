import type Database from 'better-sqlite3'
import { InvalidArgumentError, InternalError } from '../core/index.js'
import { isKid, newSigningKey, open, seal, SealedBoxError, type KeyStore, type SigningKeyRecord, type TokenKind } from '../auth/index.js'
import { deriveKey } from './auth-master-key.js'

// The API store's share of src/auth's ports (reference §6: signing keys are per organization):
// signing keys sealed under the master key, org members, the tokens each org has issued (ids and
// scope only, never the token), and revocations. Tables live in the API's SQLite file beside
// apps; opened secrets are cached in memory so a request costs no decryption.

const SCHEMA = `
CREATE TABLE IF NOT EXISTS signing_keys (kid TEXT PRIMARY KEY, org TEXT NOT NULL, sealed BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS signing_keys_org ON signing_keys(org, created_at);
CREATE TABLE IF NOT EXISTS org_members (org TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (org, name));
CREATE TABLE IF NOT EXISTS issued_tokens (
  id TEXT PRIMARY KEY, org TEXT NOT NULL, kind TEXT NOT NULL, app TEXT, machine TEXT, member TEXT, name TEXT NOT NULL,
  created_at TEXT NOT NULL, expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS issued_tokens_org ON issued_tokens(org);
CREATE TABLE IF NOT EXISTS token_revocations (token_id TEXT PRIMARY KEY, org TEXT NOT NULL DEFAULT '', revoked_at INTEGER NOT NULL);
`

export type MemberRole = 'admin' | 'member' | 'viewer'
export const MEMBER_ROLES: readonly MemberRole[] = ['admin', 'member', 'viewer']

export interface MemberRow { org: string; name: string; role: MemberRole; createdAt: string }

export interface IssuedTokenRow {
  id: string
  org: string
  kind: TokenKind
  app?: string
  machine?: string
  /** The member it was issued to, if any (removing the member revokes it). */
  member?: string
  name: string
  createdAt: string
  expiresAt: string
  revokedAt?: string
}

interface IssuedDbRow { id: string; org: string; kind: string; app: string | null; machine: string | null; member: string | null; name: string; created_at: string; expires_at: string; revoked_at: number | null }

const toIssued = (row: IssuedDbRow): IssuedTokenRow => ({
  id: row.id, org: row.org, kind: row.kind as TokenKind, name: row.name, createdAt: row.created_at, expiresAt: row.expires_at,
  ...(row.app ? { app: row.app } : {}), ...(row.machine ? { machine: row.machine } : {}), ...(row.member ? { member: row.member } : {}),
  ...(row.revoked_at ? { revokedAt: new Date(row.revoked_at).toISOString() } : {}),
})

export class AuthStore implements KeyStore {
  readonly #db: Database.Database
  readonly #keyWrap: Buffer
  readonly #opened = new Map<string, SigningKeyRecord>()

  constructor(db: Database.Database, masterKey: Uint8Array) {
    this.#db = db
    this.#keyWrap = deriveKey(masterKey, 'signing-keys')
    db.exec(SCHEMA)
  }

  // ── KeyStore (src/auth port) ──

  getKey(kid: string): SigningKeyRecord | undefined {
    const cached = this.#opened.get(kid)
    if (cached) return cached
    if (!isKid(kid)) return undefined
    const row = this.#db.prepare('SELECT kid, org, sealed, created_at FROM signing_keys WHERE kid = ?').get(kid) as { kid: string; org: string; sealed: Buffer; created_at: number } | undefined
    return row ? this.#open(row) : undefined
  }

  currentKey(orgId: string): SigningKeyRecord | undefined {
    const row = this.#db.prepare('SELECT kid, org, sealed, created_at FROM signing_keys WHERE org = ? ORDER BY created_at DESC, rowid DESC LIMIT 1').get(orgId) as { kid: string; org: string; sealed: Buffer; created_at: number } | undefined
    return row ? this.getKey(row.kid) ?? this.#open(row) : undefined
  }

  addKey(record: SigningKeyRecord): void {
    if (!isKid(record.kid)) throw new InvalidArgumentError(`key id ${JSON.stringify(record.kid)} must be lowercase hex`)
    const sealed = seal(this.#keyWrap, record.secret, this.#aad(record.kid, record.orgId))
    this.#db.prepare('INSERT INTO signing_keys (kid, org, sealed, created_at) VALUES (?, ?, ?, ?)').run(record.kid, record.orgId, sealed, record.createdAt)
  }

  deleteKey(kid: string): void {
    this.#db.prepare('DELETE FROM signing_keys WHERE kid = ?').run(kid)
    this.#opened.delete(kid)
  }

  /** The org's current key, made on first use. */
  ensureOrgKey(org: string): SigningKeyRecord {
    const existing = this.currentKey(org)
    if (existing) return existing
    const record = newSigningKey(org)
    this.addKey(record)
    return this.getKey(record.kid)!
  }

  #aad(kid: string, org: string): Buffer {
    return Buffer.from(`signing-key\0${kid}\0${org}`)
  }

  #open(row: { kid: string; org: string; sealed: Buffer; created_at: number }): SigningKeyRecord {
    let secret: Buffer
    try {
      secret = open(this.#keyWrap, row.sealed, this.#aad(row.kid, row.org))
    } catch (err) {
      // A wrong master key (or a row moved between orgs) must not look like a bad token.
      if (err instanceof SealedBoxError) throw new InternalError(`signing key ${row.kid} does not open with this API's master key (was master.key replaced?)`)
      throw err
    }
    const record: SigningKeyRecord = { kid: row.kid, orgId: row.org, secret, createdAt: row.created_at }
    this.#opened.set(row.kid, record)
    return record
  }

  // ── members ──

  addMember(org: string, name: string, role: MemberRole): MemberRow {
    const member: MemberRow = { org, name, role, createdAt: new Date().toISOString() }
    const result = this.#db.prepare('INSERT OR IGNORE INTO org_members (org, name, role, created_at) VALUES (?, ?, ?, ?)').run(org, name, role, member.createdAt)
    if (result.changes === 0) throw new InvalidArgumentError(`${name} is already a member of ${org}`)
    return member
  }

  members(org: string): MemberRow[] {
    return (this.#db.prepare('SELECT org, name, role, created_at FROM org_members WHERE org = ? ORDER BY created_at, name').all(org) as Array<{ org: string; name: string; role: string; created_at: string }>)
      .map((r) => ({ org: r.org, name: r.name, role: r.role as MemberRole, createdAt: r.created_at }))
  }

  memberCount(org: string): number {
    return (this.#db.prepare('SELECT COUNT(*) AS n FROM org_members WHERE org = ?').get(org) as { n: number }).n
  }

  removeMember(org: string, name: string): boolean {
    return this.#db.prepare('DELETE FROM org_members WHERE org = ? AND name = ?').run(org, name).changes === 1
  }

  // ── issued tokens (never the token itself) ──

  recordIssued(row: Omit<IssuedTokenRow, 'revokedAt'>): void {
    this.#db.prepare('INSERT OR IGNORE INTO issued_tokens (id, org, kind, app, machine, member, name, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(row.id, row.org, row.kind, row.app ?? null, row.machine ?? null, row.member ?? null, row.name, row.createdAt, row.expiresAt)
  }

  issuedTokens(org: string): IssuedTokenRow[] {
    return (this.#db.prepare('SELECT t.*, r.revoked_at FROM issued_tokens t LEFT JOIN token_revocations r ON r.token_id = t.id WHERE t.org = ? ORDER BY t.created_at, t.id').all(org) as IssuedDbRow[]).map(toIssued)
  }

  issuedToken(id: string): IssuedTokenRow | undefined {
    const row = this.#db.prepare('SELECT t.*, r.revoked_at FROM issued_tokens t LEFT JOIN token_revocations r ON r.token_id = t.id WHERE t.id = ?').get(id) as IssuedDbRow | undefined
    return row ? toIssued(row) : undefined
  }

  tokensOfMember(org: string, member: string): string[] {
    return (this.#db.prepare('SELECT id FROM issued_tokens WHERE org = ? AND member = ?').all(org, member) as Array<{ id: string }>).map((r) => r.id)
  }

  // ── revocations ──

  addRevocation(tokenId: string, org: string, revokedAt: number): void {
    this.#db.prepare('INSERT OR IGNORE INTO token_revocations (token_id, org, revoked_at) VALUES (?, ?, ?)').run(tokenId, org, revokedAt)
  }

  revocations(): Array<{ tokenId: string; revokedAt: number }> {
    return (this.#db.prepare('SELECT token_id, revoked_at FROM token_revocations').all() as Array<{ token_id: string; revoked_at: number }>)
      .map((r) => ({ tokenId: r.token_id, revokedAt: r.revoked_at }))
  }
}
