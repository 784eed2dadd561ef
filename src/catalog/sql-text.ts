// A tiny SQL lexer: enough to split a schema file into statements and to read a statement's
// leading keywords, skipping comments, string literals and quoted identifiers. SQLite itself
// does the real parsing; this only decides which statements are let through to it.

interface Scan {
  /** Statements, each without its trailing semicolon, trimmed; empty ones dropped. */
  statements: string[]
}

function skipQuoted(sql: string, start: number, quote: string): number {
  let i = start + 1
  while (i < sql.length) {
    if (sql[i] === quote) {
      if (sql[i + 1] === quote) { i += 2; continue }
      return i + 1
    }
    i++
  }
  return sql.length
}

export function splitStatements(sql: string): Scan {
  const statements: string[] = []
  let start = 0
  let i = 0
  while (i < sql.length) {
    const c = sql[i]!
    if (c === "'" || c === '"' || c === '`') { i = skipQuoted(sql, i, c); continue }
    if (c === '[') { const end = sql.indexOf(']', i + 1); i = end < 0 ? sql.length : end + 1; continue }
    if (c === '-' && sql[i + 1] === '-') { const end = sql.indexOf('\n', i); i = end < 0 ? sql.length : end + 1; continue }
    if (c === '/' && sql[i + 1] === '*') { const end = sql.indexOf('*/', i + 2); i = end < 0 ? sql.length : end + 2; continue }
    if (c === ';') {
      const text = sql.slice(start, i).trim()
      if (stripComments(text).length > 0) statements.push(text)
      start = i + 1
    }
    i++
  }
  const tail = sql.slice(start).trim()
  if (stripComments(tail).length > 0) statements.push(tail)
  return { statements }
}

/** The statement with comments removed and whitespace collapsed (string literals kept). */
export function stripComments(sql: string): string {
  let out = ''
  let i = 0
  while (i < sql.length) {
    const c = sql[i]!
    if (c === "'" || c === '"' || c === '`') { const end = skipQuoted(sql, i, c); out += sql.slice(i, end); i = end; continue }
    if (c === '-' && sql[i + 1] === '-') { const end = sql.indexOf('\n', i); i = end < 0 ? sql.length : end + 1; out += ' '; continue }
    if (c === '/' && sql[i + 1] === '*') { const end = sql.indexOf('*/', i + 2); i = end < 0 ? sql.length : end + 2; out += ' '; continue }
    out += /\s/.test(c) ? ' ' : c
    i++
  }
  return out.replace(/ +/g, ' ').trim()
}

/** The first `count` words of a statement, upper-cased (comments skipped). */
export function leadingKeywords(sql: string, count: number): string[] {
  const words = stripComments(sql).split(/[\s(]+/).filter((w) => w.length > 0)
  return words.slice(0, count).map((w) => w.toUpperCase())
}

export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}

export function quoteString(value: string): string {
  return `'${value.replace(/'/g, "''")}'`
}
