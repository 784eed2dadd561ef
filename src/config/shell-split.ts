import { InvalidArgumentError } from '../core/index.js'

// flyctl splits a process command (`web = "bin/rails server -b 0.0.0.0"`) and release_command
// with google/shlex into the Machine's init.cmd (flyctl internal/appconfig processgroups.go
// InitCmd). Same rules here: whitespace separates words; single quotes keep everything literally;
// double quotes keep everything but let a backslash escape `"`, `\`, `$`, backtick and newline;
// outside quotes a backslash escapes the next character; `#` at the start of a word begins a
// comment. No variable expansion, no globbing: the guest's init runs the argv as given.

export function shellSplit(command: string, field = 'command'): string[] {
  const words: string[] = []
  let word = ''
  let inWord = false
  let i = 0
  while (i < command.length) {
    const ch = command[i]!
    if (ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r') {
      if (inWord) { words.push(word); word = ''; inWord = false }
      i++
      continue
    }
    if (ch === '#' && !inWord) break
    inWord = true
    if (ch === '\\') {
      if (i + 1 >= command.length) throw new InvalidArgumentError(`${field}: ends with an unfinished escape (\\)`)
      if (command[i + 1] !== '\n') word += command[i + 1]
      i += 2
      continue
    }
    if (ch === "'") {
      const close = command.indexOf("'", i + 1)
      if (close < 0) throw new InvalidArgumentError(`${field}: a single quote is not closed`)
      word += command.slice(i + 1, close)
      i = close + 1
      continue
    }
    if (ch === '"') {
      i++
      let closed = false
      while (i < command.length) {
        const c = command[i]!
        if (c === '"') { closed = true; i++; break }
        if (c === '\\' && i + 1 < command.length && '"\\$`\n'.includes(command[i + 1]!)) {
          if (command[i + 1] !== '\n') word += command[i + 1]
          i += 2
          continue
        }
        word += c
        i++
      }
      if (!closed) throw new InvalidArgumentError(`${field}: a double quote is not closed`)
      continue
    }
    word += ch
    i++
  }
  if (inWord) words.push(word)
  return words
}
