import type { MaybePromise } from './key-store.js'

// Issue 5: `hangar tokens revoke` takes effect on every API node. Tokens are revoked by token id
// (derived from the nonce, so attenuated copies share it — see tokenIdOf). This is the port; the
// API stores the list and shares it between its nodes.

export interface RevocationList {
  isRevoked(tokenId: string): MaybePromise<boolean>
  revoke(tokenId: string, nowMs?: number): MaybePromise<void>
}

export class InMemoryRevocationList implements RevocationList {
  readonly #revoked = new Map<string, number>()

  isRevoked(tokenId: string): boolean {
    return this.#revoked.has(tokenId)
  }

  revoke(tokenId: string, nowMs: number = Date.now()): void {
    if (!this.#revoked.has(tokenId)) this.#revoked.set(tokenId, nowMs)
  }

  /** When each id was revoked. */
  entries(): Array<{ tokenId: string; revokedAt: number }> {
    return [...this.#revoked].map(([tokenId, revokedAt]) => ({ tokenId, revokedAt }))
  }
}
