import { readFileSync } from 'node:fs'

/** Whether something is mounted exactly at `path` (an absolute path without spaces), from this
 * process's mount table. */
export function isMountpoint(path: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((line) => line.split(' ')[4] === path)
}
