import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { UnprocessableError, type MachineConfig } from '../core/index.js'
import type { ImageRuntimeConfig, MachineRow } from './store.js'

// What a Machine's main process looks like: its argv, env, working dir and user, from the image
// config and the Machine config (reference §1.5 `init`, `processes`, `env`; §3.5 runtime env).
// Pure functions of their inputs, so they are tested without a guest.

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
export const DEFAULT_MEMORY_MB = 256
export const DEFAULT_CPUS = 1

export interface ProcessPlan {
  args: string[]
  env: Record<string, string>
  cwd: string
  user: string
}

/** argv: `init.exec` replaces everything; otherwise entrypoint + cmd, where a Machine-level
 * entrypoint drops the image's cmd unless a cmd is given too (Docker's rule, which Fly follows).
 * `processes[0]` (Fly's per-process overrides) wins over `init`. */
export function processPlan(machine: Pick<MachineRow, 'id' | 'app' | 'region' | 'instanceId' | 'privateIp' | 'primaryRegion' | 'imageRef' | 'metadata'>, config: MachineConfig, image: ImageRuntimeConfig, secrets: Record<string, string> = {}): ProcessPlan {
  const process = config.processes?.[0]
  const exec = process?.exec?.length ? process.exec : config.init?.exec
  let args: string[]
  if (exec?.length) {
    args = exec
  } else {
    const entrypointOverride = process?.entrypoint?.length ? process.entrypoint : config.init?.entrypoint
    const cmdOverride = process?.cmd?.length ? process.cmd : config.init?.cmd
    const entrypoint = entrypointOverride ?? image.entrypoint
    const cmd = cmdOverride ?? (entrypointOverride ? [] : image.cmd)
    args = [...entrypoint, ...cmd]
  }
  if (args.length === 0) throw new UnprocessableError('the image has no entrypoint or cmd and the Machine config gives none (set config.init.cmd or config.init.exec)')

  const env: Record<string, string> = { PATH: DEFAULT_PATH }
  for (const entry of image.env) {
    const eq = entry.indexOf('=')
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1)
  }
  Object.assign(env, secrets, config.env ?? {}, process?.env ?? {})
  const imageRef = `${machine.imageRef.registry}/${machine.imageRef.repository}${machine.imageRef.tag ? `:${machine.imageRef.tag}` : ''}${machine.imageRef.digest ? `@${machine.imageRef.digest}` : ''}`
  const memoryMb = config.guest?.memory_mb ?? DEFAULT_MEMORY_MB
  const processGroup = config.metadata?.fly_process_group ?? machine.metadata.fly_process_group ?? 'app'
  // reference §3.5: the runtime environment Fly gives every Machine.
  const fly: Record<string, string> = {
    FLY_APP_NAME: machine.app,
    FLY_MACHINE_ID: machine.id,
    FLY_ALLOC_ID: machine.id,
    FLY_REGION: machine.region,
    FLY_IMAGE_REF: imageRef,
    FLY_MACHINE_VERSION: machine.instanceId,
    FLY_PRIVATE_IP: machine.privateIp,
    FLY_PROCESS_GROUP: processGroup,
    FLY_VM_MEMORY_MB: String(memoryMb),
    PRIMARY_REGION: config.env?.PRIMARY_REGION ?? (machine.primaryRegion || machine.region),
  }
  for (const ref of process?.env_from ?? []) {
    const value = { id: machine.id, version: machine.instanceId, app_name: machine.app, private_ip: machine.privateIp, region: machine.region, image: imageRef }[ref.field_ref]
    if (value !== undefined) env[ref.env_var] = value
  }
  Object.assign(env, fly)
  return { args, env, cwd: image.workingDir || '/', user: process?.user || image.user || '' }
}

/** Resolves a user spec ("", "1000", "1000:1000", "nobody", "app:app") against the guest's
 * /etc/passwd and /etc/group. */
export function resolveUser(rootfs: string, user: string): { uid: number; gid: number } {
  if (!user) return { uid: 0, gid: 0 }
  const [userPart, groupPart] = user.split(':') as [string, string | undefined]
  const passwd = readTable(join(rootfs, 'etc/passwd'))
  const groups = readTable(join(rootfs, 'etc/group'))
  let uid: number
  let gid: number
  if (/^\d+$/.test(userPart)) {
    uid = Number(userPart)
    gid = Number(passwd.find((row) => row[2] === userPart)?.[3] ?? uid)
  } else {
    const row = passwd.find((r) => r[0] === userPart)
    if (!row) throw new UnprocessableError(`user "${userPart}" does not exist in the image's /etc/passwd`)
    uid = Number(row[2]); gid = Number(row[3])
  }
  if (groupPart !== undefined) {
    if (/^\d+$/.test(groupPart)) gid = Number(groupPart)
    else {
      const row = groups.find((r) => r[0] === groupPart)
      if (!row) throw new UnprocessableError(`group "${groupPart}" does not exist in the image's /etc/group`)
      gid = Number(row[2])
    }
  }
  return { uid, gid }
}

function readTable(path: string): string[][] {
  if (!existsSync(path)) return []
  return readFileSync(path, 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'))
}

/** /etc/hosts inside the guest: its id resolves to its own addresses, and `fly-local-6pn` to its
 * 6PN address (reference §3.3). */
export function etcHosts(machine: Pick<MachineRow, 'id' | 'privateIp' | 'ipv4'>): string {
  return [
    '127.0.0.1\tlocalhost',
    '::1\tlocalhost ip6-localhost ip6-loopback',
    `${machine.privateIp}\tfly-local-6pn`,
    `${machine.privateIp}\t${machine.id}`,
    `${machine.ipv4}\t${machine.id}`,
    '',
  ].join('\n')
}

/** /etc/resolv.conf inside the guest. Fly points it at fdaa::3 (reference §3.3); Hangar points it
 * at the host's own `.internal` resolver address when the host runs DNS (fdaa::3 is served too,
 * for apps that name it; src/network/dns-resolver-address.ts), else at the host's resolvers; the
 * Machine's own `dns` settings win. */
export function resolvConf(config: MachineConfig, hostNameservers: string[]): string {
  const nameservers = config.dns?.nameservers?.length ? config.dns.nameservers : hostNameservers
  const lines = nameservers.map((ns) => `nameserver ${ns}`)
  if (config.dns?.searches?.length) lines.push(`search ${config.dns.searches.join(' ')}`)
  if (config.dns?.options?.length) lines.push(`options ${config.dns.options.map((o) => (o.value ? `${o.name}:${o.value}` : o.name)).join(' ')}`)
  return lines.join('\n') + '\n'
}

export function hostNameservers(): string[] {
  try {
    const servers = readFileSync('/etc/resolv.conf', 'utf8').split('\n')
      .map((l) => /^nameserver\s+(\S+)/.exec(l)?.[1]).filter((s): s is string => Boolean(s))
    // A loopback resolver on the host is unreachable from the guest's namespace.
    return servers.filter((s) => !s.startsWith('127.') && s !== '::1')
  } catch {
    return []
  }
}
