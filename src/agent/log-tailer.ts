import { closeSync, openSync, readSync, statSync } from 'node:fs'
import type { LogLine } from '../core/index.js'

// Follows each running Machine's log file (conmon's k8s-file format, bounded by --log-size-max)
// and hands every complete line to `emit`, which publishes it on NATS for `hangar logs`. One
// timer polls all files: cheaper than an inotify watch per Machine when hundreds run.

export interface TailTarget {
  machineId: string
  app: string
  region: string
  path: string
}

interface TailState extends TailTarget {
  offset: number
  partial: string
}

/** Parses one k8s-file line: `<RFC3339Nano> <stdout|stderr> <F|P> <message>`. */
export function parseK8sFileLine(line: string): { timestamp: string; stream: 'stdout' | 'stderr'; partial: boolean; message: string } | undefined {
  const first = line.indexOf(' ')
  const second = line.indexOf(' ', first + 1)
  const third = line.indexOf(' ', second + 1)
  if (first < 0 || second < 0) return undefined
  const stream = line.slice(first + 1, second)
  if (stream !== 'stdout' && stream !== 'stderr') return undefined
  const tag = third < 0 ? line.slice(second + 1) : line.slice(second + 1, third)
  return { timestamp: line.slice(0, first), stream, partial: tag === 'P', message: third < 0 ? '' : line.slice(third + 1) }
}

export class LogTailer {
  private readonly targets = new Map<string, TailState>()
  private timer: NodeJS.Timeout | undefined
  private readonly buffer = Buffer.allocUnsafe(64 * 1024)

  constructor(private readonly emit: (line: LogLine) => void, private readonly intervalMs = 150) {}

  /** Starts following a Machine's log from its current end (older lines are in the file). */
  follow(target: TailTarget, fromStart = false): void {
    let offset = 0
    if (!fromStart) {
      try { offset = statSync(target.path).size } catch { offset = 0 }
    }
    this.targets.set(target.machineId, { ...target, offset, partial: '' })
    if (!this.timer) {
      this.timer = setInterval(() => this.poll(), this.intervalMs)
      this.timer.unref()
    }
  }

  /** Reads what is left, then stops following. */
  unfollow(machineId: string): void {
    const state = this.targets.get(machineId)
    if (state) this.drain(state)
    this.targets.delete(machineId)
    if (this.targets.size === 0 && this.timer) { clearInterval(this.timer); this.timer = undefined }
  }

  poll(): void {
    for (const state of this.targets.values()) this.drain(state)
  }

  private drain(state: TailState): void {
    let size: number
    try { size = statSync(state.path).size } catch { return }
    // conmon truncates the file when it reaches --log-size-max: start over from the top.
    if (size < state.offset) { state.offset = 0; state.partial = '' }
    if (size === state.offset) return
    let fd: number
    try { fd = openSync(state.path, 'r') } catch { return }
    try {
      while (state.offset < size) {
        const read = readSync(fd, this.buffer, 0, Math.min(this.buffer.length, size - state.offset), state.offset)
        if (read <= 0) break
        state.offset += read
        const text = state.partial + this.buffer.toString('utf8', 0, read)
        const lines = text.split('\n')
        state.partial = lines.pop() ?? ''
        let pending = ''
        for (const raw of lines) {
          const parsed = parseK8sFileLine(raw)
          if (!parsed) continue
          if (parsed.partial) { pending += parsed.message; continue }
          this.emit({ timestamp: parsed.timestamp, app: state.app, machine_id: state.machineId, region: state.region, stream: parsed.stream, message: pending + parsed.message })
          pending = ''
        }
      }
    } finally {
      closeSync(fd)
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
    this.targets.clear()
  }
}
