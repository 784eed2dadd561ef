import { InvalidArgumentError, parseDurationMs } from '../core/index.js'
import { TomlLocator, type TomlPath } from './toml-locations.js'

// Reads a parsed TOML document into typed values, recording every problem with the key's path
// and line (issue 5: "wrong types fail with the line and key named") and every unknown key as a
// warning. Problems are collected so one run reports all of them; the caller throws once.

export interface ConfigProblem {
  /** 1-based line in the file, when the key could be found. */
  line?: number
  /** Dotted path with indexes, e.g. `services[0].ports[1].port`. */
  key: string
  message: string
}

export type ConfigWarning = ConfigProblem

/** A fly.toml that cannot be used. `problems` lists each with its line and key. */
export class FlyTomlError extends InvalidArgumentError {
  readonly problems: readonly ConfigProblem[]
  readonly fileName: string
  constructor(fileName: string, problems: readonly ConfigProblem[]) {
    super(problems.map((p) => formatProblem(fileName, p)).join('\n'))
    this.name = 'FlyTomlError'
    this.fileName = fileName
    this.problems = problems
  }
}

export function formatProblem(fileName: string, problem: ConfigProblem): string {
  const where = problem.line !== undefined ? `${fileName}:${problem.line}` : fileName
  return problem.key === '' ? `${where}: ${problem.message}` : `${where}: ${problem.key}: ${problem.message}`
}

export function formatPath(path: TomlPath): string {
  let out = ''
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`
    else out += out === '' ? part : `.${part}`
  }
  return out
}

export type Table = Record<string, unknown>

/** A TOML table as smol-toml builds it (a null-prototype object) or a plain object. */
export const isTable = (value: unknown): value is Table => {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Date) return false
  const proto = Object.getPrototypeOf(value)
  return proto === null || proto === Object.prototype
}

function describe(value: unknown): string {
  if (value === null || value === undefined) return 'nothing'
  if (Array.isArray(value)) return 'an array'
  if (isTable(value)) return 'a table'
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`
  if (typeof value === 'number') return Number.isInteger(value) ? `the integer ${value}` : `the number ${value}`
  if (typeof value === 'boolean') return `the boolean ${value}`
  return `a ${typeof value}`
}

export class ConfigReader {
  readonly problems: ConfigProblem[] = []
  readonly warnings: ConfigWarning[] = []
  readonly #locator: TomlLocator

  constructor(source: string) {
    this.#locator = new TomlLocator(source)
  }

  #at(path: TomlPath, message: string): ConfigProblem {
    const line = this.#locator.lineOf(path)
    return line === undefined ? { key: formatPath(path), message } : { line, key: formatPath(path), message }
  }

  problem(path: TomlPath, message: string): undefined {
    this.problems.push(this.#at(path, message))
    return undefined
  }

  warn(path: TomlPath, message: string): void {
    this.warnings.push(this.#at(path, message))
  }

  wrongType(path: TomlPath, expected: string, value: unknown): undefined {
    return this.problem(path, `expected ${expected}, got ${describe(value)}`)
  }

  /** Warns about keys a section does not know; they are ignored. */
  checkKeys(table: Table, path: TomlPath, known: readonly string[], ignoredWithNote: Readonly<Record<string, string>> = {}): void {
    for (const key of Object.keys(table)) {
      if (known.includes(key)) continue
      const note = ignoredWithNote[key]
      if (note !== undefined) {
        if (note !== '') this.warn([...path, key], note)
        continue
      }
      const section = path.length === 0 ? 'at the top level' : `in [${formatPath(path)}]`
      this.warn([...path, key], `unknown key ${JSON.stringify(key)} ${section} is ignored`)
    }
  }

  table(value: unknown, path: TomlPath): Table | undefined {
    if (value === undefined) return undefined
    if (!isTable(value)) return this.wrongType(path, 'a table', value)
    return value
  }

  /** `[x]` (one table) or `[[x]]` (an array of tables) → entries with the path of each. */
  tableOrList(value: unknown, path: TomlPath): Array<{ table: Table; path: TomlPath }> {
    if (value === undefined) return []
    if (isTable(value)) return [{ table: value, path }]
    if (Array.isArray(value)) {
      const out: Array<{ table: Table; path: TomlPath }> = []
      value.forEach((item, i) => {
        if (isTable(item)) out.push({ table: item, path: [...path, i] })
        else this.wrongType([...path, i], 'a table', item)
      })
      return out
    }
    this.wrongType(path, 'a table or an array of tables', value)
    return []
  }

  string(table: Table, key: string, path: TomlPath, options: { nonEmpty?: boolean; oneOf?: readonly string[] } = {}): string | undefined {
    const value = table[key]
    if (value === undefined) return undefined
    if (typeof value !== 'string') return this.wrongType([...path, key], options.oneOf ? `one of ${options.oneOf.map((o) => JSON.stringify(o)).join(', ')}` : 'a string', value)
    if (options.nonEmpty && value.trim() === '') return this.problem([...path, key], 'must not be empty')
    if (options.oneOf && !options.oneOf.includes(value)) return this.problem([...path, key], `must be one of ${options.oneOf.map((o) => JSON.stringify(o)).join(', ')}, got ${JSON.stringify(value)}`)
    return value
  }

  boolean(table: Table, key: string, path: TomlPath): boolean | undefined {
    const value = table[key]
    if (value === undefined) return undefined
    if (typeof value !== 'boolean') return this.wrongType([...path, key], 'true or false', value)
    return value
  }

  /** An integer; numeric strings are accepted where flyctl accepts them (ports). */
  integer(table: Table, key: string, path: TomlPath, options: { min?: number; max?: number; what?: string; allowNumericString?: boolean } = {}): number | undefined {
    let value = table[key]
    if (value === undefined) return undefined
    if (options.allowNumericString && typeof value === 'string' && /^\d+$/.test(value.trim())) value = Number(value.trim())
    const what = options.what ?? 'an integer'
    if (typeof value !== 'number' || !Number.isInteger(value)) return this.wrongType([...path, key], what, value)
    if (options.min !== undefined && value < options.min) return this.problem([...path, key], `must be at least ${options.min}, got ${value}`)
    if (options.max !== undefined && value > options.max) return this.problem([...path, key], `must be at most ${options.max}, got ${value}`)
    return value
  }

  number(table: Table, key: string, path: TomlPath): number | undefined {
    const value = table[key]
    if (value === undefined) return undefined
    if (typeof value !== 'number' || !Number.isFinite(value)) return this.wrongType([...path, key], 'a number', value)
    return value
  }

  port(table: Table, key: string, path: TomlPath): number | undefined {
    return this.integer(table, key, path, { min: 1, max: 65535, what: 'a port number (1-65535)', allowNumericString: true })
  }

  stringList(table: Table, key: string, path: TomlPath): string[] | undefined {
    const value = table[key]
    if (value === undefined) return undefined
    if (!Array.isArray(value)) return this.wrongType([...path, key], 'an array of strings', value)
    const out: string[] = []
    value.forEach((item, i) => {
      if (typeof item === 'string') out.push(item)
      else this.wrongType([...path, key, i], 'a string', item)
    })
    return out
  }

  /** A string or an array of strings (experimental.cmd and friends). */
  stringOrList(table: Table, key: string, path: TomlPath): string[] | undefined {
    const value = table[key]
    if (typeof value === 'string') return [value]
    return this.stringList(table, key, path)
  }

  /** A Go duration string ("10s", "1m30s") or an integer in `integerUnit` (fly.toml writes
   * kill_timeout = 5 for seconds and legacy check intervals as milliseconds). Returns ms. */
  duration(table: Table, key: string, path: TomlPath, integerUnit: 'seconds' | 'milliseconds'): number | undefined {
    const value = table[key]
    if (value === undefined) return undefined
    if (typeof value === 'number') {
      if (!Number.isInteger(value) || value < 0) return this.wrongType([...path, key], `a duration like "10s" or a whole number of ${integerUnit}`, value)
      return integerUnit === 'seconds' ? value * 1000 : value
    }
    if (typeof value !== 'string') return this.wrongType([...path, key], `a duration like "10s" or a whole number of ${integerUnit}`, value)
    try {
      return parseDurationMs(value, formatPath([...path, key]))
    } catch {
      return this.problem([...path, key], `${JSON.stringify(value)} is not a duration (use forms like "10s", "1m30s", "500ms")`)
    }
  }

  /** A string map whose values may be written as numbers or booleans (flyctl stringifies them). */
  stringMap(table: Table, key: string, path: TomlPath): Record<string, string> | undefined {
    const value = table[key]
    if (value === undefined) return undefined
    const map = this.table(value, [...path, key])
    if (!map) return undefined
    const out: Record<string, string> = {}
    for (const [k, v] of Object.entries(map)) {
      if (typeof v === 'string') out[k] = v
      else if (typeof v === 'number' || typeof v === 'boolean') out[k] = String(v)
      else this.wrongType([...path, key, k], 'a string', v)
    }
    return out
  }
}
