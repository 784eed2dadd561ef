import { UnprocessableError } from '../core/index.js'

// A deploy that stopped before finishing: a Machine did not come up healthy, the image could not
// be used, or the release command failed. What was changed has been put back (`rolledBack`), so
// the previous release keeps serving; `restoreFailures` names anything that could not be.

export class DeployAbortedError extends UnprocessableError {
  release?: { id: string; version: number }
  rolledBack = false
  restoreFailures: string[] = []
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'DeployAbortedError'
  }
}

export const isDeployAborted = (err: unknown): err is DeployAbortedError => err instanceof DeployAbortedError
