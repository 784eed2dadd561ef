// smol-toml reports positions for syntax errors only; a type error found after parsing ("port is
// a string") must still name its line. This locator scans the source once and records the line of
// every table header and every `key = value`, resolving arrays of tables ([[services]]) to indexes
// the way the parser does, so a path like ["services", 1, "ports", 0, "port"] maps to a line.
// Values spanning lines (arrays, multi-line strings) are skipped over, and a path inside an inline
// value resolves to the line of the key that holds it.

export type TomlPath = ReadonlyArray<string | number>

const pathKey = (path: TomlPath): string => JSON.stringify(path)

export class TomlLocator {
  readonly #lines = new Map<string, number>()

  constructor(source: string) {
    this.#scan(source)
  }

  /** The line (1-based) where `path` or its nearest recorded ancestor is defined. */
  lineOf(path: TomlPath): number | undefined {
    for (let length = path.length; length > 0; length--) {
      const line = this.#lines.get(pathKey(path.slice(0, length)))
      if (line !== undefined) return line
    }
    return undefined
  }

  #record(path: TomlPath, line: number): void {
    const key = pathKey(path)
    if (!this.#lines.has(key)) this.#lines.set(key, line)
  }

  #scan(source: string): void {
    const lines = source.split(/\r?\n/)
    const arrayIndexes = new Map<string, number>() // array-of-tables path → last index
    let table: Array<string | number> = []
    const state: ValueState = { depth: 0, multiline: null }

    const resolve = (parts: readonly string[]): Array<string | number> => {
      const resolved: Array<string | number> = []
      for (const part of parts) {
        resolved.push(part)
        const index = arrayIndexes.get(pathKey(resolved))
        if (index !== undefined) resolved.push(index)
      }
      return resolved
    }

    for (let i = 0; i < lines.length; i++) {
      const lineNumber = i + 1
      const text = lines[i]!
      if (state.multiline !== null || state.depth > 0) {
        scanValue(text, 0, state)
        continue
      }
      const trimmed = text.trimStart()
      if (trimmed === '' || trimmed.startsWith('#')) continue
      const offset = text.length - trimmed.length
      if (trimmed.startsWith('[[')) {
        const parsed = parseKey(text, offset + 2)
        if (!parsed) continue
        const parent = resolve(parsed.parts.slice(0, -1))
        const arrayPath = [...parent, parsed.parts[parsed.parts.length - 1]!]
        const index = (arrayIndexes.get(pathKey(arrayPath)) ?? -1) + 1
        arrayIndexes.set(pathKey(arrayPath), index)
        table = [...arrayPath, index]
        this.#record(arrayPath, lineNumber)
        this.#record(table, lineNumber)
        continue
      }
      if (trimmed.startsWith('[')) {
        const parsed = parseKey(text, offset + 1)
        if (!parsed) continue
        table = resolve(parsed.parts)
        this.#record(table, lineNumber)
        continue
      }
      const parsed = parseKey(text, offset)
      if (!parsed) continue
      let cursor = parsed.end
      while (cursor < text.length && (text[cursor] === ' ' || text[cursor] === '\t')) cursor++
      if (text[cursor] !== '=') continue
      const full = [...table, ...parsed.parts]
      for (let length = table.length + 1; length <= full.length; length++) this.#record(full.slice(0, length), lineNumber)
      scanValue(text, cursor + 1, state)
    }
  }
}

interface ValueState {
  depth: number
  multiline: '"""' | "'''" | null
}

/** Advances through a value, tracking open brackets and multi-line strings across lines. */
function scanValue(text: string, start: number, state: ValueState): void {
  let i = start
  while (i < text.length) {
    if (state.multiline !== null) {
      const close = findClose(text, i, state.multiline)
      if (close < 0) return
      state.multiline = null
      i = close
      continue
    }
    const ch = text[i]!
    if (ch === '#') return
    if (text.startsWith('"""', i) || text.startsWith("'''", i)) {
      state.multiline = text.slice(i, i + 3) as '"""' | "'''"
      i += 3
      continue
    }
    if (ch === '"' || ch === "'") {
      i = skipString(text, i)
      continue
    }
    if (ch === '[' || ch === '{') state.depth++
    else if ((ch === ']' || ch === '}') && state.depth > 0) state.depth--
    i++
  }
}

function findClose(text: string, from: number, delimiter: '"""' | "'''"): number {
  for (let i = from; i <= text.length - 3; i++) {
    if (delimiter === '"""' && text[i] === '\\') { i++; continue }
    if (text.startsWith(delimiter, i)) {
      let end = i + 3
      while (text[end] === delimiter[0]) end++ // up to two quotes may end the content
      return end
    }
  }
  return -1
}

function skipString(text: string, start: number): number {
  const quote = text[start]!
  let i = start + 1
  while (i < text.length) {
    if (quote === '"' && text[i] === '\\') { i += 2; continue }
    if (text[i] === quote) return i + 1
    i++
  }
  return i
}

/** Parses a (dotted, possibly quoted) key starting at `start`. */
function parseKey(text: string, start: number): { parts: string[]; end: number } | undefined {
  const parts: string[] = []
  let i = start
  for (;;) {
    while (text[i] === ' ' || text[i] === '\t') i++
    const ch = text[i]
    if (ch === '"' || ch === "'") {
      const end = skipString(text, i)
      const raw = text.slice(i + 1, end - 1)
      parts.push(ch === '"' ? unescapeBasic(raw) : raw)
      i = end
    } else {
      const match = /^[A-Za-z0-9_-]+/.exec(text.slice(i))
      if (!match) return undefined
      parts.push(match[0])
      i += match[0].length
    }
    let j = i
    while (text[j] === ' ' || text[j] === '\t') j++
    if (text[j] !== '.') return { parts, end: i }
    i = j + 1
  }
}

function unescapeBasic(raw: string): string {
  try {
    return JSON.parse(`"${raw}"`) as string
  } catch {
    return raw
  }
}
