import type { IncomingMessage, ServerResponse } from 'node:http'
import { Agent, request } from 'undici'
import { type Logger, silentLogger, UnavailableError } from '../core/index.js'
import type { CrrStore } from './crr-store.js'
import { formatHostPort, parseHostPort } from './net-address.js'
import { decodeSyncAnswer, decodeSyncState, encodeSyncAnswer, encodeSyncState } from './sync-state.js'

// Anti-entropy sync over HTTP on the gossip port's TCP side (reference §5.4: Corrosion syncs
// over its QUIC gossip transport; TCP here). The asker POSTs its SyncState; the peer answers with
// the changesets the asker lacks and the version ranges they settle. Answers are bounded; the
// asker repeats while an answer says it is incomplete.

export const SYNC_PATH = '/v1/sync'
const MAX_STATE_BYTES = 4 * 1024 * 1024
const MAX_ANSWER_BYTES = 256 * 1024 * 1024

export interface SyncStats {
  rounds: number
  failures: number
  bytesSent: number
  bytesReceived: number
  changesetsReceived: number
  served: number
}

/** Handles POST /v1/sync; anything else is a 404. */
export function createSyncHandler(store: CrrStore, clusterTag: number, stats: SyncStats, logger: Logger = silentLogger) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    if (req.method !== 'POST' || req.url !== SYNC_PATH) {
      res.writeHead(404).end()
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > MAX_STATE_BYTES) { res.writeHead(413).end(); req.destroy(); return }
      chunks.push(chunk)
    })
    req.on('error', () => res.destroy())
    req.on('end', () => {
      if (res.writableEnded) return
      try {
        const body = Buffer.concat(chunks)
        if (body.length < 4) throw new RangeError('sync request shorter than its cluster tag')
        if (body.readUInt32BE(0) !== clusterTag) {
          res.writeHead(409, { 'content-type': 'text/plain' }).end('different cluster')
          return
        }
        const state = decodeSyncState(body.subarray(4))
        const answer = encodeSyncAnswer(store.answerSync(state))
        stats.served++
        stats.bytesSent += answer.length
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': answer.length }).end(answer)
      } catch (err) {
        logger.debug('bad sync request', { err })
        if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/plain' }).end(err instanceof Error ? err.message : 'bad request')
      }
    })
  }
}

export class SyncClient {
  private readonly agent = new Agent({ keepAliveTimeout: 30_000, connections: 4, headersTimeout: 10_000, bodyTimeout: 60_000 })

  constructor(
    private readonly store: CrrStore,
    private readonly clusterTag: number,
    readonly stats: SyncStats,
    private readonly logger: Logger = silentLogger,
  ) {}

  /** Pulls everything `addr` has that this node lacks. Returns the changesets applied. */
  async pullFrom(addr: string, signal?: AbortSignal): Promise<number> {
    const { host, port } = parseHostPort(addr, 'sync peer')
    let applied = 0
    for (let round = 0; round < 50; round++) {
      const state = encodeSyncState(this.store.syncState())
      const body = Buffer.alloc(4 + state.length)
      body.writeUInt32BE(this.clusterTag, 0)
      state.copy(body, 4)
      this.stats.rounds++
      this.stats.bytesSent += body.length
      let answerBytes: Buffer
      try {
        const response = await request(`http://${formatHostPort(host, port)}${SYNC_PATH}`, {
          method: 'POST', body, dispatcher: this.agent, signal,
          headers: { 'content-type': 'application/octet-stream' },
        })
        if (response.statusCode !== 200) {
          const text = await response.body.text()
          throw new UnavailableError(`sync with ${addr}: HTTP ${response.statusCode} ${text.slice(0, 200)}`)
        }
        const declared = Number(response.headers['content-length'] ?? 0)
        if (declared > MAX_ANSWER_BYTES) { response.body.destroy(); throw new UnavailableError(`sync with ${addr}: answer of ${declared} bytes is too large`) }
        answerBytes = Buffer.from(await response.body.arrayBuffer())
      } catch (err) {
        this.stats.failures++
        if (err instanceof UnavailableError) throw err
        throw new UnavailableError(`sync with ${addr} failed: ${(err as Error).message}`, { cause: err })
      }
      this.stats.bytesReceived += answerBytes.length
      const answer = decodeSyncAnswer(answerBytes)
      // Only accept changesets inside the ranges the answer says it covers.
      const changesets = answer.changesets.filter((c) => answer.covered.get(c.siteId.toString('hex'))?.has(c.version))
      this.stats.changesetsReceived += changesets.length
      const outcome = this.store.applyChangesets(changesets, answer.covered)
      applied += outcome.versionsApplied
      if (outcome.deferred.length > 0) this.logger.warn('sync: changesets deferred', { peer: addr, deferred: outcome.deferred.slice(0, 5) })
      // Stop when done, or when an incomplete answer brought nothing this node can apply yet
      // (deferred for a schema it does not have): asking again would get the same answer.
      if (answer.complete || outcome.versionsApplied === 0) break
    }
    return applied
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => {})
  }
}
