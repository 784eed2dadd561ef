import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'

// A long-lived Perl process that serves numbered requests (perl-base is Essential on Debian:
// every host has it). The host's tool launcher (command-shell.ts) and the network set-up helper
// (network/netlink-helper.ts) are two such scripts. Node spawns the worker once; each request is
// a line it writes, each answer a line `<kind> <id> <rest>` the worker prints. An idle worker
// never keeps Node running.

export interface WorkerReply { kind: string; rest: string }

interface Pending {
  resolve: (reply: WorkerReply) => void
  reject: (err: Error) => void
  onInterim?: (reply: WorkerReply) => void
}

export class PerlWorker {
  private child: ChildProcess | undefined
  private readonly pending = new Map<number, Pending>()
  private nextId = 1

  /** `final`: the reply kinds that end a request; others go to the request's onInterim. */
  constructor(private readonly name: string, private readonly script: string, private readonly final: ReadonlySet<string>) {}

  private ensure(): ChildProcess {
    if (this.child && this.child.exitCode === null && !this.child.killed) return this.child
    const child = spawn('perl', ['-e', this.script], { stdio: ['pipe', 'pipe', 'inherit'] })
    createInterface({ input: child.stdout! }).on('line', (line) => this.onLine(line))
    const fail = (why: string) => {
      if (this.child === child) this.child = undefined
      for (const [id, pending] of this.pending) {
        pending.reject(new Error(`the ${this.name} ${why}`))
        this.pending.delete(id)
      }
    }
    child.once('exit', () => fail('exited'))
    child.once('error', (err) => fail(`could not run perl (Debian package perl-base): ${err.message}`))
    child.stdin!.on('error', () => undefined)
    this.child = child
    this.hold(false)
    return child
  }

  private hold(busy: boolean): void {
    const child = this.child
    if (!child) return
    const handles = [child, child.stdin, child.stdout] as unknown as Array<{ ref?: () => void; unref?: () => void } | null>
    for (const handle of handles) busy ? handle?.ref?.() : handle?.unref?.()
  }

  private onLine(line: string): void {
    const first = line.indexOf(' ')
    const second = line.indexOf(' ', first + 1)
    const kind = line.slice(0, first)
    const id = Number(second < 0 ? line.slice(first + 1) : line.slice(first + 1, second))
    const rest = second < 0 ? '' : line.slice(second + 1)
    const pending = this.pending.get(id)
    if (!pending) return
    if (!this.final.has(kind)) { pending.onInterim?.({ kind, rest }); return }
    this.pending.delete(id)
    if (this.pending.size === 0) this.hold(false)
    pending.resolve({ kind, rest })
  }

  /** Sends `encode(id)` (the request, with its id, ready to write) and waits for its final reply. */
  request(encode: (id: number) => string, onInterim?: (reply: WorkerReply) => void): { id: number; reply: Promise<WorkerReply> } {
    const child = this.ensure()
    const id = this.nextId++
    const reply = new Promise<WorkerReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onInterim })
      if (this.pending.size === 1) this.hold(true)
      child.stdin!.write(encode(id))
    })
    return { id, reply }
  }

  close(): void {
    this.child?.kill('SIGKILL')
    this.child = undefined
  }
}
