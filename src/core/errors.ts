// Typed, coded errors. Each failure is a class with a stable `code`, the HTTP status it maps to,
// and Fly's `status` word where Fly has one (reference §1.7). Domain code throws these; the API
// turns any error into Fly's envelope with `toErrorEnvelope` — the only place a status is chosen.
// Errors also cross NATS (agent → API) as `{code, message, flyStatus}` and are rebuilt on the
// other side with `errorFromWire`, so callers test `isNotFound(err)`, never message text.

/** Fly's `status` words (spec `main.statusCode`): only these four exist; everything else is "unknown"
 * and the precise kind travels in Hangar's `code`. */
export type FlyStatusWord = 'unknown' | 'insufficient_capacity' | 'volume_placement_capacity' | 'name_taken'

interface ErrorKind {
  readonly httpStatus: number
  readonly flyStatus: FlyStatusWord
  readonly description: string
}

/** Every error code Hangar emits, with its HTTP status. A test proves each is documented here. */
export const ERROR_KINDS = {
  invalid_argument: { httpStatus: 400, flyStatus: 'unknown', description: 'The request is malformed: bad JSON, wrong type, unknown field, bad value.' },
  unauthorized: { httpStatus: 401, flyStatus: 'unknown', description: 'No token, or a token that does not verify.' },
  forbidden: { httpStatus: 403, flyStatus: 'unknown', description: 'The token is valid but its caveats do not allow this request.' },
  not_found: { httpStatus: 404, flyStatus: 'unknown', description: 'No such app, Machine, volume or route (also for resources of another org).' },
  conflict: { httpStatus: 409, flyStatus: 'unknown', description: 'Another operation holds the Machine, a lease is held, or current_version does not match.' },
  wait_timeout: { httpStatus: 408, flyStatus: 'unknown', description: 'A wait ended before the Machine reached the state asked for.' },
  illegal_state: { httpStatus: 412, flyStatus: 'unknown', description: 'The Machine is in a state that does not allow this operation.' },
  precondition_failed: { httpStatus: 412, flyStatus: 'unknown', description: 'A version or precondition the caller named does not hold.' },
  payload_too_large: { httpStatus: 413, flyStatus: 'unknown', description: 'The request body is larger than the API accepts.' },
  name_taken: { httpStatus: 422, flyStatus: 'name_taken', description: 'An app or Machine with this name already exists.' },
  unprocessable: { httpStatus: 422, flyStatus: 'unknown', description: 'The request is well formed but cannot be carried out as given (bad image, bad config).' },
  insufficient_capacity: { httpStatus: 412, flyStatus: 'insufficient_capacity', description: 'No host in the requested region can hold the Machine.' },
  rate_limited: { httpStatus: 429, flyStatus: 'unknown', description: 'Too many requests.' },
  unavailable: { httpStatus: 503, flyStatus: 'unknown', description: 'A component the request needs (a host, NATS) is not reachable.' },
  internal: { httpStatus: 500, flyStatus: 'unknown', description: 'A bug or an unexpected failure; the message says what failed.' },
} as const satisfies Record<string, ErrorKind>

export type ErrorCode = keyof typeof ERROR_KINDS

export class HangarError extends Error {
  readonly code: ErrorCode
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = 'HangarError'
  }
  get httpStatus(): number { return ERROR_KINDS[this.code].httpStatus }
  get flyStatus(): FlyStatusWord { return ERROR_KINDS[this.code].flyStatus }
}

export class InvalidArgumentError extends HangarError {
  constructor(message: string, options?: { cause?: unknown }) { super('invalid_argument', message, options) }
}
export class UnauthorizedError extends HangarError {
  constructor(message = 'unauthorized: a valid token is required (Authorization: Bearer <token> or FlyV1 <token>)') { super('unauthorized', message) }
}
export class ForbiddenError extends HangarError {
  constructor(message: string) { super('forbidden', message) }
}
export class NotFoundError extends HangarError {
  constructor(what: string) { super('not_found', `${what} not found`) }
}
export class ConflictError extends HangarError {
  constructor(message: string) { super('conflict', message) }
}
export class WaitTimeoutError extends HangarError {
  constructor(message: string) { super('wait_timeout', message) }
}
/** An operation asked of a Machine whose current state does not allow it (DESIGN "Machine lifecycle"). */
export class IllegalStateError extends HangarError {
  readonly currentState: string
  constructor(message: string, currentState: string) {
    super('illegal_state', message)
    this.currentState = currentState
  }
}
export class PreconditionFailedError extends HangarError {
  constructor(message: string) { super('precondition_failed', message) }
}
export class PayloadTooLargeError extends HangarError {
  constructor(limitBytes: number) { super('payload_too_large', `request body exceeds the limit of ${limitBytes} bytes`) }
}
export class NameTakenError extends HangarError {
  constructor(message: string) { super('name_taken', message) }
}
export class UnprocessableError extends HangarError {
  constructor(message: string, options?: { cause?: unknown }) { super('unprocessable', message, options) }
}
export class InsufficientCapacityError extends HangarError {
  constructor(message: string) { super('insufficient_capacity', message) }
}
export class UnavailableError extends HangarError {
  constructor(message: string, options?: { cause?: unknown }) { super('unavailable', message, options) }
}
export class InternalError extends HangarError {
  constructor(message: string, options?: { cause?: unknown }) { super('internal', message, options) }
}

export const isHangarError = (err: unknown): err is HangarError => err instanceof HangarError
export const isNotFound = (err: unknown): boolean => isHangarError(err) && err.code === 'not_found'
export const isConflict = (err: unknown): boolean => isHangarError(err) && err.code === 'conflict'
export const isIllegalState = (err: unknown): err is IllegalStateError => err instanceof IllegalStateError
export const isInvalidArgument = (err: unknown): boolean => isHangarError(err) && err.code === 'invalid_argument'
export const isUnavailable = (err: unknown): boolean => isHangarError(err) && err.code === 'unavailable'

/** Fly's error envelope (spec `ErrorResponse`), plus Hangar's stable `code` for scripts. */
export interface ErrorEnvelope {
  error: string
  status: FlyStatusWord
  code: ErrorCode
}

/** The one place an error becomes an HTTP status and Fly's envelope. Unknown errors are 500s
 * whose message names no internals (stack traces and causes go to the log, not the client). */
export function toErrorEnvelope(err: unknown): { httpStatus: number; body: ErrorEnvelope } {
  if (isHangarError(err)) return { httpStatus: err.httpStatus, body: { error: err.message, status: err.flyStatus, code: err.code } }
  return { httpStatus: 500, body: { error: 'internal error', status: 'unknown', code: 'internal' } }
}

/** How an error travels over NATS. */
export interface WireError {
  code: string
  message: string
  currentState?: string
}

export function errorToWire(err: unknown): WireError {
  if (err instanceof IllegalStateError) return { code: err.code, message: err.message, currentState: err.currentState }
  if (isHangarError(err)) return { code: err.code, message: err.message }
  return { code: 'internal', message: err instanceof Error ? err.message : String(err) }
}

export function errorFromWire(wire: WireError): HangarError {
  const code = (wire.code in ERROR_KINDS ? wire.code : 'internal') as ErrorCode
  if (code === 'illegal_state') return new IllegalStateError(wire.message, wire.currentState ?? 'unknown')
  return new HangarError(code, wire.message)
}
