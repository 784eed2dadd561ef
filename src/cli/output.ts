// Human output by default, JSON for scripts, and a spinner on a terminal while waiting.

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n')
}

export function printTable(rows: Array<Record<string, string | number | boolean | undefined>>, columns: string[]): void {
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? '').length)))
  const line = (cells: string[]) => cells.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()
  process.stdout.write(line(columns.map((c) => c.toUpperCase())) + '\n')
  for (const row of rows) process.stdout.write(line(columns.map((c) => String(row[c] ?? ''))) + '\n')
}

/** Shows `text` with a spinner on stderr while `work` runs (only on a terminal). */
export async function withSpinner<T>(text: string, work: () => Promise<T>): Promise<T> {
  if (!process.stderr.isTTY) return work()
  const frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']
  let i = 0
  const timer = setInterval(() => process.stderr.write(`\r${frames[i++ % frames.length]} ${text}`), 80)
  try {
    return await work()
  } finally {
    clearInterval(timer)
    process.stderr.write('\r\x1b[K')
  }
}

export function info(text: string): void {
  process.stderr.write(text + '\n')
}
