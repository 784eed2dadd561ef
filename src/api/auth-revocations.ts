import type { Bus } from '../bus/index.js'
import { type Logger, silentLogger } from '../core/index.js'
import type { RevocationList } from '../auth/index.js'
import type { AuthStore } from './auth-store.js'

// Issue 5: "revocation takes effect on every API node". Each API process checks revocations in
// memory (a request must not cost a query), so a revocation is (1) written to the store, so it
// survives restarts and reaches nodes sharing the store when they reload, and (2) sent on NATS as
// a request every API node answers once it has applied it: the revoking node waits a short while
// for those answers, so when `hangar tokens revoke` returns, every node that answered refuses the
// token. A node that missed the message (NATS down) catches up from the store on its next reload.

export const REVOCATIONS_SUBJECT = 'hangar.api.revocations'
const ACK_WINDOW_MS = 250
const RELOAD_INTERVAL_MS = 15_000

interface RevocationMessage { tokenId: string; org: string; revokedAt: number; node: string }

export class SharedRevocationList implements RevocationList {
  readonly #revoked = new Set<string>()
  readonly #store: AuthStore
  readonly #bus: Bus | undefined
  readonly #logger: Logger
  readonly #node: string
  readonly #stopServing: (() => void) | undefined
  readonly #reloadTimer: NodeJS.Timeout
  #closed = false

  constructor(options: { store: AuthStore; bus?: Bus; node: string; logger?: Logger }) {
    this.#store = options.store
    this.#bus = options.bus
    this.#node = options.node
    this.#logger = options.logger ?? silentLogger
    this.reload()
    this.#stopServing = this.#bus?.reply(REVOCATIONS_SUBJECT, (payload) => {
      const message = payload as Partial<RevocationMessage> | undefined
      if (!message || typeof message.tokenId !== 'string' || !/^[0-9a-f]{32}$/.test(message.tokenId)) return undefined
      this.#apply(message.tokenId, typeof message.org === 'string' ? message.org : '', typeof message.revokedAt === 'number' ? message.revokedAt : Date.now())
      return { node: this.#node, applied: message.tokenId }
    })
    this.#reloadTimer = setInterval(() => this.reload(), RELOAD_INTERVAL_MS)
    this.#reloadTimer.unref()
  }

  isRevoked(tokenId: string): boolean {
    return this.#revoked.has(tokenId)
  }

  /** RevocationList port: revokes locally and everywhere (the org is unknown here). */
  async revoke(tokenId: string, nowMs: number = Date.now()): Promise<void> {
    await this.revokeEverywhere(tokenId, '', nowMs)
  }

  /** Stores the revocation, applies it here, and waits briefly for the other API nodes to confirm.
   * Returns the ids of the nodes that confirmed (this one included). */
  async revokeEverywhere(tokenId: string, org: string, nowMs: number = Date.now()): Promise<string[]> {
    this.#apply(tokenId, org, nowMs)
    if (!this.#bus) return [this.#node]
    const message: RevocationMessage = { tokenId, org, revokedAt: nowMs, node: this.#node }
    try {
      const answers = await this.#bus.gather<{ node?: string }>(REVOCATIONS_SUBJECT, message, ACK_WINDOW_MS)
      return [...new Set(answers.map((a) => a.node).filter((n): n is string => typeof n === 'string'))].sort()
    } catch (err) {
      this.#logger.warn('a revocation could not be broadcast; other API nodes apply it at their next reload', { err })
      return [this.#node]
    }
  }

  /** Re-reads the store (nodes sharing it, or having missed a broadcast, catch up here). */
  reload(): void {
    if (this.#closed) return
    try {
      for (const { tokenId } of this.#store.revocations()) this.#revoked.add(tokenId)
    } catch (err) {
      this.#logger.warn('reloading revocations failed', { err })
    }
  }

  #apply(tokenId: string, org: string, revokedAt: number): void {
    this.#revoked.add(tokenId)
    try {
      this.#store.addRevocation(tokenId, org, revokedAt)
    } catch (err) {
      this.#logger.warn('storing a revocation failed (it is applied in memory)', { err })
    }
  }

  close(): void {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#reloadTimer)
    this.#stopServing?.()
  }
}
