import type Database from 'better-sqlite3'
import { InternalError, InvalidArgumentError } from '../core/index.js'
import { hmac, open, seal, SealedBoxError } from '../auth/index.js'
import { deriveKey } from './auth-master-key.js'

// App secrets (issue 5, reference §1.2 `/apps/{app}/secrets`): values are sealed under a key
// derived from the master key, with the app and name as associated data (a box cannot be moved to
// another app or name). The API never returns a value: listings carry the name, a digest and the
// dates. The digest is a keyed HMAC, not a plain hash, so a short secret cannot be guessed from
// it. Every change bumps the app's secrets version (Fly's `version`, `min_secrets_version`).

const SCHEMA = `
CREATE TABLE IF NOT EXISTS app_secrets (
  app TEXT NOT NULL, name TEXT NOT NULL, sealed BLOB NOT NULL, digest TEXT NOT NULL,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (app, name)
);
CREATE TABLE IF NOT EXISTS app_secrets_versions (app TEXT PRIMARY KEY, version INTEGER NOT NULL);
`

/** Env var names; FLY_ names are the platform's (reference §3.5) and would be overwritten. */
const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,255}$/
export const MAX_SECRET_VALUE_BYTES = 64 * 1024
export const MAX_SECRETS_PER_APP = 500

export interface SecretInfo { name: string; digest: string; created_at: string; updated_at: string }

export function checkSecretName(name: unknown): string {
  if (typeof name !== 'string' || !SECRET_NAME.test(name)) {
    throw new InvalidArgumentError(`secret name ${JSON.stringify(String(name).slice(0, 80))} must be an environment variable name (letters, digits and _, not starting with a digit)`)
  }
  if (name.toUpperCase().startsWith('FLY_')) throw new InvalidArgumentError(`secret name ${name}: names starting with FLY_ are set by the platform`)
  return name
}

function checkSecretValue(name: string, value: unknown): string {
  // The message names the secret, never its value.
  if (typeof value !== 'string') throw new InvalidArgumentError(`secret ${name}: the value must be a string`)
  if (Buffer.byteLength(value) > MAX_SECRET_VALUE_BYTES) throw new InvalidArgumentError(`secret ${name}: the value is larger than ${MAX_SECRET_VALUE_BYTES} bytes`)
  if (value.includes('\0')) throw new InvalidArgumentError(`secret ${name}: the value must not contain NUL bytes (it becomes an environment variable)`)
  return value
}

export class SecretStore {
  readonly #db: Database.Database
  readonly #sealKey: Buffer
  readonly #digestKey: Buffer

  constructor(db: Database.Database, masterKey: Uint8Array) {
    this.#db = db
    this.#sealKey = deriveKey(masterKey, 'app-secrets')
    this.#digestKey = deriveKey(masterKey, 'app-secret-digests')
    db.exec(SCHEMA)
  }

  version(app: string): number {
    return (this.#db.prepare('SELECT version FROM app_secrets_versions WHERE app = ?').get(app) as { version: number } | undefined)?.version ?? 0
  }

  list(app: string): SecretInfo[] {
    return (this.#db.prepare('SELECT name, digest, created_at, updated_at FROM app_secrets WHERE app = ? ORDER BY name').all(app) as SecretInfo[])
  }

  get(app: string, name: string): SecretInfo | undefined {
    return this.#db.prepare('SELECT name, digest, created_at, updated_at FROM app_secrets WHERE app = ? AND name = ?').get(app, name) as SecretInfo | undefined
  }

  /** Sets (string) and unsets (null) in one transaction; returns the new version. */
  update(app: string, changes: Record<string, string | null>): number {
    const entries = Object.entries(changes)
    if (entries.length === 0) throw new InvalidArgumentError('give at least one secret to set or unset')
    for (const [name, value] of entries) {
      checkSecretName(name)
      if (value !== null) checkSecretValue(name, value)
    }
    const now = new Date().toISOString()
    return this.#db.transaction(() => {
      for (const [name, value] of entries) {
        if (value === null) {
          this.#db.prepare('DELETE FROM app_secrets WHERE app = ? AND name = ?').run(app, name)
          continue
        }
        const sealed = seal(this.#sealKey, Buffer.from(value, 'utf8'), this.#aad(app, name))
        this.#db.prepare(`INSERT INTO app_secrets (app, name, sealed, digest, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
          ON CONFLICT(app, name) DO UPDATE SET sealed = excluded.sealed, digest = excluded.digest, updated_at = excluded.updated_at`)
          .run(app, name, sealed, this.digest(app, name, value), now, now)
      }
      const count = (this.#db.prepare('SELECT COUNT(*) AS n FROM app_secrets WHERE app = ?').get(app) as { n: number }).n
      if (count > MAX_SECRETS_PER_APP) throw new InvalidArgumentError(`an app may hold at most ${MAX_SECRETS_PER_APP} secrets`)
      const row = this.#db.prepare('INSERT INTO app_secrets_versions (app, version) VALUES (?, 1) ON CONFLICT(app) DO UPDATE SET version = version + 1 RETURNING version').get(app) as { version: number }
      return row.version
    })()
  }

  /** The opened values, for the agent that starts the app's Machines. Never for a response. */
  values(app: string): Record<string, string> {
    const values: Record<string, string> = {}
    for (const row of this.#db.prepare('SELECT name, sealed FROM app_secrets WHERE app = ?').all(app) as Array<{ name: string; sealed: Buffer }>) {
      try {
        values[row.name] = open(this.#sealKey, row.sealed, this.#aad(app, row.name)).toString('utf8')
      } catch (err) {
        if (err instanceof SealedBoxError) throw new InternalError(`secret ${row.name} of app ${app} does not open with this API's master key`)
        throw err
      }
    }
    return values
  }

  deleteApp(app: string): void {
    this.#db.prepare('DELETE FROM app_secrets WHERE app = ?').run(app)
    this.#db.prepare('DELETE FROM app_secrets_versions WHERE app = ?').run(app)
  }

  /** 16 hex digits of HMAC(digest key, app, name, value): changes when the value does, says
   * nothing about it. */
  digest(app: string, name: string, value: string): string {
    return hmac(this.#digestKey, Buffer.concat([this.#aad(app, name), Buffer.from([0]), Buffer.from(value, 'utf8')])).toString('hex').slice(0, 16)
  }

  #aad(app: string, name: string): Buffer {
    return Buffer.from(`app-secret\0${app}\0${name}`)
  }
}
