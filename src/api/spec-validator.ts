import { readFileSync, existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { InvalidArgumentError } from '../core/index.js'

// Request bodies are checked against Fly's own OpenAPI spec (spec/fly-machines-openapi.json), so
// every field Fly knows is accepted and nothing else is: an unknown field, a wrong type or a value
// outside an enum is a 400 naming the exact path (`config.services[0].ports[1].port: expected an
// integer, got "80"`). Where Fly's real client sends something the spec does not describe
// (reference §1 "Places where the spec disagrees"), `overrides` widen the accepted shape.

interface Schema {
  type?: string
  $ref?: string
  allOf?: Schema[]
  properties?: Record<string, Schema>
  additionalProperties?: Schema | boolean
  items?: Schema
  enum?: unknown[]
}

type Override = (value: unknown, path: string) => boolean

let cachedSpec: { components: { schemas: Record<string, Schema> } } | undefined

function findSpec(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'spec', 'fly-machines-openapi.json')
    if (existsSync(candidate)) return candidate
    dir = dirname(dir)
  }
  throw new Error('spec/fly-machines-openapi.json not found next to the package')
}

function spec() {
  cachedSpec ??= JSON.parse(readFileSync(findSpec(), 'utf8'))
  return cachedSpec!
}

const isDuration = (v: unknown) => typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v) && v >= 0)

/** Paths (with [] for any array index and * for any map key) where Fly's clients send more than the spec says. */
const OVERRIDES: Record<string, Override> = {
  // reference §1.5: autostop is a string or a bool on input.
  'config.services[].autostop': (v) => typeof v === 'boolean' || v === 'off' || v === 'stop' || v === 'suspend',
  // reference §1.3: durations are Go strings, or integers (nanoseconds) from fly-go.
  'config.stop_config.timeout': isDuration,
  'config.services[].checks[].interval': isDuration,
  'config.services[].checks[].timeout': isDuration,
  'config.services[].checks[].grace_period': isDuration,
  'config.checks.*.interval': isDuration,
  'config.checks.*.timeout': isDuration,
  'config.checks.*.grace_period': isDuration,
  // fly-go's Kill sends {"signal": 9}.
  signal: (v) => typeof v === 'string' || (typeof v === 'number' && Number.isInteger(v)),
  timeout: isDuration,
  // The stop signal in a config is checked for being a real signal later, like the stop body's.
  'config.stop_config.signal': (v) => typeof v === 'string',
  // fly-go sends `id` in StopMachineInput bodies.
  id: (v) => typeof v === 'string',
  // flyctl sends the CLI's `app_name`; our CLI too.
  app_name: (v) => typeof v === 'string',
  // fly-go sends these on updates of metadata.
  'metadata.*': (v) => typeof v === 'string' || v === null,
  // CreateMachineRequest.lsvd (documented, not in every spec version).
  lsvd: (v) => typeof v === 'boolean',
}

const typeName = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v === 'string' ? `"${v.length > 40 ? v.slice(0, 40) + '…' : v}"` : String(v))

function resolve(schema: Schema): Schema {
  let current = schema
  for (let i = 0; i < 10 && current.$ref; i++) {
    const name = current.$ref.replace('#/components/schemas/', '')
    const target = spec().components.schemas[name]
    if (!target) throw new Error(`spec: unknown schema ${name}`)
    current = target
  }
  if (current.allOf) {
    const merged: Schema = { type: current.type ?? 'object', properties: { ...current.properties } }
    for (const part of current.allOf) {
      const resolved = resolve(part)
      Object.assign(merged.properties!, resolved.properties)
      if (resolved.additionalProperties) merged.additionalProperties = resolved.additionalProperties
      merged.type ??= resolved.type
    }
    return merged
  }
  return current
}

function check(value: unknown, schema: Schema, path: string, pattern: string, errors: string[]): void {
  if (errors.length >= 5) return
  const override = OVERRIDES[pattern]
  if (override) {
    if (!override(value, path)) errors.push(`${path}: ${typeName(value)} is not an accepted value`)
    return
  }
  const resolved = resolve(schema)
  const where = path || 'body'
  switch (resolved.type ?? (resolved.properties ? 'object' : undefined)) {
    case 'object': {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) { errors.push(`${where}: expected an object, got ${typeName(value)}`); return }
      for (const [key, child] of Object.entries(value)) {
        const childPath = path ? `${path}.${key}` : key
        const childPattern = pattern ? `${pattern}.${key}` : key
        const property = resolved.properties?.[key]
        if (property) { check(child, property, childPath, childPattern, errors); continue }
        if (resolved.additionalProperties && typeof resolved.additionalProperties === 'object') {
          check(child, resolved.additionalProperties, childPath, pattern ? `${pattern}.*` : '*', errors)
          continue
        }
        if (OVERRIDES[childPattern]) { check(child, {}, childPath, childPattern, errors); continue }
        if (resolved.additionalProperties === true || (!resolved.properties && resolved.additionalProperties === undefined)) continue
        errors.push(`${childPath}: unknown field`)
      }
      return
    }
    case 'array':
      if (!Array.isArray(value)) { errors.push(`${where}: expected an array, got ${typeName(value)}`); return }
      if (value.length > 1000) { errors.push(`${where}: more than 1000 items`); return }
      value.forEach((item, i) => check(item, resolved.items ?? {}, `${path}[${i}]`, `${pattern}[]`, errors))
      return
    case 'string':
      if (typeof value !== 'string') { errors.push(`${where}: expected a string, got ${typeName(value)}`); return }
      if (resolved.enum && !resolved.enum.includes(value)) errors.push(`${where}: ${typeName(value)} is not one of ${resolved.enum.join(', ')}`)
      return
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) errors.push(`${where}: expected an integer, got ${typeName(value)}`)
      return
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) errors.push(`${where}: expected a number, got ${typeName(value)}`)
      return
    case 'boolean':
      if (typeof value !== 'boolean') errors.push(`${where}: expected true or false, got ${typeName(value)}`)
      return
    default:
      return // the spec leaves it open (e.g. `request: {}` objects)
  }
}

/** Checks `body` against the spec's schema `schemaName`; throws one InvalidArgumentError naming
 * up to five problems. */
export function validateAgainstSpec(body: unknown, schemaName: string): void {
  const errors: string[] = []
  check(body, { $ref: `#/components/schemas/${schemaName}` }, '', '', errors)
  if (errors.length) throw new InvalidArgumentError(`invalid request: ${errors.join('; ')}`)
}

/** The spec's schemas, for the conformance test and for documentation. */
export function specSchemas(): Record<string, unknown> {
  return spec().components.schemas
}
