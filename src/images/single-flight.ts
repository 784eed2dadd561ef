// One run of a keyed job however many callers ask for it at once: the first caller starts it,
// later callers join the same promise until it settles (then the next call starts afresh).
// The pull path keys manifests by reference, blobs by digest and unpacked layers by diff_id, so
// twenty Machines created from one image — or two images sharing a base layer — download each
// layer once.

export class SingleFlight<T> {
  private readonly inflight = new Map<string, Promise<T>>()

  run(key: string, job: () => Promise<T>): Promise<T> {
    const running = this.inflight.get(key)
    if (running) return running
    const started = (async () => {
      try {
        return await job()
      } finally {
        this.inflight.delete(key)
      }
    })()
    this.inflight.set(key, started)
    return started
  }

  /** Keys with a job in flight. */
  get size(): number {
    return this.inflight.size
  }

  /** Settles when every job in flight now has settled (rejections included). */
  async drain(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight.values()])
  }
}

/** Waits for `promise` but gives up when `signal` aborts. The work itself goes on (it is shared
 * with other callers and its result lands in the cache); only this caller stops waiting. */
export function waitUnlessAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise
  if (signal.aborted) return Promise.reject(abortReason(signal))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal))
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => { signal.removeEventListener('abort', onAbort); resolve(value) },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err) },
    )
  })
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('The operation was aborted', 'AbortError')
}
