// The backhaul's wire protocol (issue 4 "Backhaul and closeness"; DESIGN "Processes":
// edge proxy ──backhaul──► worker proxy ──► Machine). One HTTP/2 session over mutual TLS from each
// proxy to each other proxy, reused for everything between the two hosts (multiplexed streams):
//
//   CONNECT  :authority <machineId>:<internal port>    a tunnel to the Machine: raw TCP, TLS-
//            → 200 hangar-load: n                       terminated bytes, one HTTP/1.1 request
//            → 503 hangar-refusal: at_capacity, hangar-load: n     (or WebSocket) per stream
//            → 404 hangar-refusal: unknown_machine | 502 hangar-error: <errno>
//   <method> <path>  hangar-machine: <machineId>:<port>  one request/response exchange (HTTP/2
//            hangar-h2-backend: 0|1                     clients, h2_backend services), answered
//            → the Machine's status and headers + hangar-load, or a refusal as above
//   GET /.hangar/load                                   a long response: one NDJSON load report
//            → {"l": [[key, load], ...]}\n every ~100 ms  (load-reports.ts) per change, ≥ 1/s
//   PING                                                RTT (rtt.ts)
//
// The edge has already done everything HTTP (headers Fly adds, Fly-Region being the edge's,
// fly-replay); the worker only counts, enforces the hard limit and connects. A stream is one
// connection or one request, so the worker's count of open streams is the Machine's load.

export const LOAD_REPORT_PATH = '/.hangar/load'

export const BACKHAUL_HEADER = {
  machine: 'hangar-machine',
  h2Backend: 'hangar-h2-backend',
  load: 'hangar-load',
  refusal: 'hangar-refusal',
  error: 'hangar-error',
} as const

export type BackhaulRefusal = 'at_capacity' | 'unknown_machine' | 'closing'

/** Error codes a backhaul socket or exchange fails with, besides the worker's errno. */
export const BACKHAUL_ERROR = {
  atCapacity: 'EHANGAR_AT_CAPACITY',
  unknownMachine: 'EHANGAR_UNKNOWN_MACHINE',
  noPeer: 'EHANGAR_NO_PEER',
  closing: 'EHANGAR_CLOSING',
} as const

export class BackhaulError extends Error {
  readonly code: string
  constructor(code: string, message: string) {
    super(message)
    this.code = code
    this.name = 'BackhaulError'
  }
}

/** The worker refused at the Machine's hard limit: the edge picks again (or queues); the Machine
 * never saw the request, and it is neither an upstream error nor a reason to avoid the Machine. */
export function isAtCapacity(errorOrCode: unknown): boolean {
  const code = typeof errorOrCode === 'string' ? errorOrCode : (errorOrCode as { code?: unknown } | null)?.code
  return code === BACKHAUL_ERROR.atCapacity
}

/** `<machineId>:<port>` → parts, or undefined. */
export function parseMachineAuthority(value: string): { machineId: string; port: number } | undefined {
  const colon = value.lastIndexOf(':')
  if (colon <= 0) return undefined
  const machineId = value.slice(0, colon)
  const port = Number(value.slice(colon + 1))
  if (!/^[A-Za-z0-9_-]+$/.test(machineId) || !Number.isInteger(port) || port < 1 || port > 65535) return undefined
  return { machineId, port }
}

/** The key a Machine's service has on every proxy (MachineEntry.key). Only TCP is proxied. */
export function machineServiceKey(machineId: string, port: number): string {
  return `${machineId}/tcp/${port}`
}
