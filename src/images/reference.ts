import { InvalidArgumentError } from '../core/index.js'

// Image references as Docker spells them (distribution/reference grammar):
//   [registry[:port]/]path[:tag][@algorithm:hex]
// A first path part is a registry when it holds a '.' or ':' or is 'localhost' (or is an IPv6
// literal in brackets); otherwise the image is on Docker Hub, whose one-part names live under
// 'library/' ("busybox" → docker.io/library/busybox:latest). A reference without tag or digest
// means ':latest'. With both a tag and a digest, the digest decides what is pulled and the tag is
// kept for display (Docker does the same).

export const DOCKER_HUB = 'docker.io'
/** Docker Hub's API lives on another host than its name (Docker's own client does this mapping). */
const DOCKER_HUB_API_HOST = 'registry-1.docker.io'
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com'])

export interface ImageReference {
  /** 'docker.io', 'ghcr.io', '127.0.0.1:5000', '[::1]:5000' */
  registry: string
  /** 'library/busybox', 'org/app' */
  repository: string
  /** Absent only when a digest pins the image and no tag was written. */
  tag?: string
  /** 'sha256:<64 hex>' when the reference pins a manifest. */
  digest?: string
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/
const IPV6_LITERAL = /^\[[a-fA-F0-9:]+\]$/
const PORT = /^[0-9]{1,5}$/
const TAG = /^[\w][\w.-]{0,127}$/
const DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/
const MAX_NAME_LENGTH = 255

function invalid(input: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`invalid image reference ${JSON.stringify(input)}: ${why}`)
}

function looksLikeRegistry(part: string): boolean {
  return part.includes('.') || part.includes(':') || part === 'localhost' || part.startsWith('[')
}

function validRegistry(registry: string): boolean {
  let host = registry
  let port: string | undefined
  if (registry.startsWith('[')) {
    const close = registry.indexOf(']')
    if (close < 0) return false
    host = registry.slice(0, close + 1)
    const rest = registry.slice(close + 1)
    if (rest !== '') {
      if (!rest.startsWith(':')) return false
      port = rest.slice(1)
    }
    if (!IPV6_LITERAL.test(host)) return false
  } else {
    const colon = registry.lastIndexOf(':')
    if (colon >= 0) { host = registry.slice(0, colon); port = registry.slice(colon + 1) }
    if (!host.split('.').every((c) => DOMAIN_COMPONENT.test(c))) return false
  }
  if (port !== undefined && (!PORT.test(port) || Number(port) > 65535)) return false
  return true
}

/** Parses and normalises an image reference; throws InvalidArgumentError naming what is wrong. */
export function parseImageReference(input: string): ImageReference {
  if (typeof input !== 'string' || input.trim() === '') throw invalid(String(input), 'it is empty')
  if (input !== input.trim() || /\s/.test(input)) throw invalid(input, 'it contains whitespace')

  let rest = input
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!DIGEST.test(digest)) throw invalid(input, `"${digest}" is not a digest (expected algorithm:hex, e.g. sha256:<64 hex digits>)`)
  }

  let registry = DOCKER_HUB
  const slash = rest.indexOf('/')
  if (slash >= 0 && looksLikeRegistry(rest.slice(0, slash))) {
    registry = rest.slice(0, slash)
    rest = rest.slice(slash + 1)
    if (!validRegistry(registry)) throw invalid(input, `"${registry}" is not a valid registry host[:port]`)
  }

  let tag: string | undefined
  // A tag's ':' comes after the last '/', so a registry port is never mistaken for one.
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!TAG.test(tag)) throw invalid(input, `"${tag}" is not a valid tag`)
  }

  if (rest === '') throw invalid(input, 'the repository name is missing')
  for (const component of rest.split('/')) {
    if (!PATH_COMPONENT.test(component)) {
      const hint = /[A-Z]/.test(component) ? ' (repository names must be lowercase)' : ''
      throw invalid(input, `"${component}" is not a valid repository name component${hint}`)
    }
  }

  if (DOCKER_HUB_ALIASES.has(registry.toLowerCase())) registry = DOCKER_HUB
  let repository = rest
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH) throw invalid(input, `the name is longer than ${MAX_NAME_LENGTH} characters`)

  if (tag === undefined && digest === undefined) tag = 'latest'
  const reference: ImageReference = { registry, repository }
  if (tag !== undefined) reference.tag = tag
  if (digest !== undefined) reference.digest = digest
  return reference
}

/** The canonical spelling: 'docker.io/library/busybox:latest', 'host:5000/app@sha256:…', or both. */
export function formatImageReference(reference: ImageReference): string {
  let out = `${reference.registry}/${reference.repository}`
  if (reference.tag !== undefined) out += `:${reference.tag}`
  if (reference.digest !== undefined) out += `@${reference.digest}`
  return out
}

/** 'registry/repository' without tag or digest: the key under which tags are remembered. */
export function repositoryKey(reference: ImageReference): string {
  return `${reference.registry}/${reference.repository}`
}

/** The host:port the registry's HTTP API answers on (Docker Hub's differs from its name). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : registry
}

/** Host part of 'host:port' / '[v6]:port', lowercased, without brackets. */
export function registryHostname(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']')).toLowerCase()
  const colon = registry.lastIndexOf(':')
  return (colon >= 0 ? registry.slice(0, colon) : registry).toLowerCase()
}

/** Loopback registries are spoken to over plain HTTP (Docker treats 127.0.0.0/8 and ::1 as insecure too). */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registryHostname(registry)
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}
