import { UnprocessableError } from '../core/index.js'

// An image that cannot be pulled is the caller's problem to fix (a wrong name, a wrong password,
// a broken registry upload), so it is `unprocessable` (422) like Fly's "failed to get manifest".
// A registry that cannot be reached or answers 5xx is `UnavailableError` from core instead: retrying
// later may work. `reason` lets the agent tell the cases apart without reading message text; it does
// not cross NATS (the code and message do). No message ever carries credentials or tokens.

export type ImagePullFailure =
  | 'not_found'            // no such repository, tag or digest in the registry
  | 'unauthorized'         // the registry (or its token server) refused our credentials / anonymous access
  | 'digest_mismatch'      // a manifest, config or layer did not hash to the digest that names it
  | 'size_mismatch'        // a blob was longer or shorter than its descriptor says
  | 'unsupported'          // a media type, compression or digest algorithm Hangar does not handle
  | 'invalid_image'        // a manifest or config that is not valid JSON of the expected shape
  | 'no_matching_platform' // a manifest list without an entry for this host's platform
  | 'unpack_failed'        // GNU tar refused a layer (e.g. a hard link to a file outside the layer)
  | 'registry_error'       // any other 4xx answer from the registry

export class ImagePullError extends UnprocessableError {
  readonly reason: ImagePullFailure
  constructor(reason: ImagePullFailure, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.reason = reason
    this.name = 'ImagePullError'
  }
}

export const isImagePullError = (err: unknown, reason?: ImagePullFailure): err is ImagePullError =>
  err instanceof ImagePullError && (reason === undefined || err.reason === reason)
