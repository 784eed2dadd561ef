import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node'
import { UnavailableError, errorFromWire, errorToWire, type Logger, silentLogger, type WireError } from '../core/index.js'

// Typed JSON over a real NATS server (DESIGN "Processes": NATS carries commands and events, never
// the source of truth). Requests to one host go to `hangar.agent.<host>.rpc`; a host answers the
// methods it serves with `{ok, result}` or `{ok: false, error}` where the error keeps its code.

export const SUBJECTS = {
  agentRpc: (hostId: string) => `hangar.agent.${hostId}.rpc`,
  /** Every host answers with its HostInfo (scatter-gather). */
  hostsDiscover: 'hangar.hosts.discover',
  /** Hosts announce themselves periodically and when they start. */
  hostHeartbeat: 'hangar.hosts.heartbeat',
  /** Machine views as they change, per host: the API's index and the proxy's routes follow it. */
  machineChanges: (hostId: string) => `hangar.machines.${hostId}`,
  allMachineChanges: 'hangar.machines.*',
  logs: (app: string, machineId: string) => `hangar.logs.${app}.${machineId}`,
  appLogs: (app: string) => `hangar.logs.${app}.*`,
  placementOffers: (region: string) => `hangar.placement.${region}.offers`,
} as const

type Reply = { ok: true; result: unknown } | { ok: false; error: WireError }

export type RpcHandlers = Record<string, (params: any) => unknown | Promise<unknown>>

export class Bus {
  private readonly subscriptions = new Set<Subscription>()
  private closed = false

  private constructor(readonly connection: NatsConnection, private readonly logger: Logger) {}

  static async connect(servers: string | string[], options: { name: string; logger?: Logger; timeoutMs?: number } = { name: 'hangar' }): Promise<Bus> {
    try {
      // "nats://a:4222,nats://b:4222" is several servers (the CLI's --nats takes them comma-joined).
      const list = (Array.isArray(servers) ? servers : [servers]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean)
      const connection = await connect({ servers: list, name: options.name, timeout: options.timeoutMs ?? 5000, maxReconnectAttempts: -1, reconnectTimeWait: 250, waitOnFirstConnect: false })
      return new Bus(connection, options.logger ?? silentLogger)
    } catch (err) {
      throw new UnavailableError(`cannot reach NATS at ${String(servers)}: ${(err as Error).message}`)
    }
  }

  /** Serves `handlers` on `subject`; each message is `{method, params}`. */
  serve(subject: string, handlers: RpcHandlers, options: { queue?: string } = {}): () => void {
    const subscription = this.connection.subscribe(subject, {
      queue: options.queue,
      callback: (err, msg) => {
        if (err) { this.logger.error('rpc subscription failed', { subject, err }); return }
        void (async () => {
          let reply: Reply
          try {
            const { method, params } = JSON.parse(new TextDecoder().decode(msg.data)) as { method: string; params: unknown }
            const handler = Object.hasOwn(handlers, method) ? handlers[method] : undefined
            if (!handler) throw Object.assign(new Error(`unknown method ${method}`), { code: 'invalid_argument' })
            reply = { ok: true, result: await handler(params) }
          } catch (error) {
            reply = { ok: false, error: errorToWire(error) }
          }
          if (msg.reply) {
            try { msg.respond(JSON.stringify(reply)) } catch (e) { this.logger.error('rpc reply failed', { subject, err: e }) }
          }
        })()
      },
    })
    this.subscriptions.add(subscription)
    return () => { subscription.unsubscribe(); this.subscriptions.delete(subscription) }
  }

  async call<T>(subject: string, method: string, params: unknown, timeoutMs = 30_000): Promise<T> {
    let msg
    try {
      msg = await this.connection.request(subject, JSON.stringify({ method, params }), { timeout: timeoutMs })
    } catch (err) {
      const message = (err as Error).message ?? String(err)
      if (/no responders|503/i.test(message)) throw new UnavailableError(`no host answers on ${subject} (is its agent running?)`)
      if (/timeout/i.test(message)) throw new UnavailableError(`${method} on ${subject} got no answer within ${timeoutMs} ms`)
      throw new UnavailableError(`${method} on ${subject} failed: ${message}`)
    }
    const reply = JSON.parse(new TextDecoder().decode(msg.data)) as Reply
    if (!reply.ok) throw errorFromWire(reply.error)
    return reply.result as T
  }

  /** Scatter-gather: every responder's answer that arrives within `maxWaitMs`; with `expected`,
   * it returns as soon as that many have answered. */
  async gather<T>(subject: string, payload: unknown, maxWaitMs: number, expected?: number): Promise<T[]> {
    const answers: T[] = []
    try {
      const options = expected ? { strategy: 'count' as const, maxMessages: expected, maxWait: maxWaitMs } : { strategy: 'timer' as const, maxWait: maxWaitMs }
      const replies = await this.connection.requestMany(subject, JSON.stringify(payload), options)
      for await (const msg of replies) {
        try { answers.push(JSON.parse(new TextDecoder().decode(msg.data)) as T) } catch { /* not ours */ }
      }
    } catch (err) {
      if (!/no responders|503/i.test((err as Error).message ?? '')) throw new UnavailableError(`gathering on ${subject} failed: ${(err as Error).message}`)
    }
    return answers
  }

  publish(subject: string, value: unknown): void {
    if (this.closed) return
    this.connection.publish(subject, JSON.stringify(value))
  }

  /** Answers each request on `subject` with `respond(payload)`'s value (a plain reply, not RPC). */
  reply(subject: string, respond: (payload: unknown) => unknown | Promise<unknown>): () => void {
    const subscription = this.connection.subscribe(subject, {
      callback: (err, msg) => {
        if (err || !msg.reply) return
        void (async () => {
          try {
            const payload = msg.data.length ? JSON.parse(new TextDecoder().decode(msg.data)) : undefined
            const answer = await respond(payload)
            if (answer !== undefined) msg.respond(JSON.stringify(answer))
          } catch (e) { this.logger.error('reply handler failed', { subject, err: e }) }
        })()
      },
    })
    this.subscriptions.add(subscription)
    return () => { subscription.unsubscribe(); this.subscriptions.delete(subscription) }
  }

  subscribe<T>(subject: string, onMessage: (value: T, subject: string) => void): () => void {
    const subscription = this.connection.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return
        try { onMessage(JSON.parse(new TextDecoder().decode(msg.data)) as T, msg.subject) } catch (e) { this.logger.error('message handler failed', { subject, err: e }) }
      },
    })
    this.subscriptions.add(subscription)
    return () => { subscription.unsubscribe(); this.subscriptions.delete(subscription) }
  }

  async flush(): Promise<void> {
    await this.connection.flush()
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    try { await this.connection.drain() } catch { await this.connection.close().catch(() => undefined) }
  }
}
