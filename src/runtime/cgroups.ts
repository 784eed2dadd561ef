import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { runCommand } from '../core/command.js'
import type { Logger } from '../core/index.js'

// Hosts may run cgroup v1, v2, or a hybrid of both (host-facts §0, §3). crun 1.8 refuses the
// hybrid layout when the v2 hierarchy holds any controller ("cgroups in hybrid mode not
// supported, drop all controllers from cgroupv2"). On this machine only `hugetlb` sits on v2;
// mounting a v1 hierarchy for it moves it off v2 (measured in host-facts §3), after which crun
// works and all limits apply. That is what `prepareCgroups` does, once per host.

export type CgroupLayout = 'v1' | 'v2' | 'hybrid'

export interface CgroupInfo {
  layout: CgroupLayout
  /** Where the v2 hierarchy is mounted, if any. */
  unifiedRoot: string | undefined
  /** v1 controller name → its mount point. */
  v1Mounts: Map<string, string>
}

export function detectCgroups(mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')): CgroupInfo {
  const v1Mounts = new Map<string, string>()
  let unifiedRoot: string | undefined
  for (const line of mountinfo.split('\n')) {
    const [left, right] = line.split(' - ')
    if (!left || !right) continue
    const mountPoint = left.split(' ')[4]
    const [fsType, , superOptions] = right.split(' ')
    if (!mountPoint) continue
    if (fsType === 'cgroup2') unifiedRoot = mountPoint
    if (fsType === 'cgroup') {
      for (const option of (superOptions ?? '').split(',')) {
        if (['cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'blkio', 'pids', 'hugetlb', 'net_cls', 'net_prio', 'perf_event', 'rdma', 'misc'].includes(option)) v1Mounts.set(option, mountPoint)
      }
    }
  }
  const layout: CgroupLayout = v1Mounts.size === 0 ? 'v2' : unifiedRoot ? 'hybrid' : 'v1'
  return { layout, unifiedRoot, v1Mounts }
}

/** Controllers still on the v2 hierarchy of a hybrid host (crun needs this list empty). */
export function unifiedControllers(info: CgroupInfo): string[] {
  if (info.layout !== 'hybrid' || !info.unifiedRoot) return []
  const path = `${info.unifiedRoot}/cgroup.controllers`
  if (!existsSync(path)) return []
  return readFileSync(path, 'utf8').trim().split(/\s+/).filter(Boolean)
}

/** Makes the host's cgroups usable by crun. Idempotent. Returns the layout it leaves. */
export async function prepareCgroups(logger?: Logger): Promise<CgroupInfo> {
  let info = detectCgroups()
  const stranded = unifiedControllers(info)
  if (stranded.length === 0) return info
  const root = info.v1Mounts.get('memory')?.replace(/\/memory$/, '') ?? '/sys/fs/cgroup'
  for (const controller of stranded) {
    const target = `${root}/${controller}`
    mkdirSync(target, { recursive: true })
    const result = await runCommand('mount', ['-t', 'cgroup', '-o', controller, `hangar-${controller}`, target], { allowFailure: true })
    if (result.code !== 0) {
      throw new Error(`cgroups: hybrid layout with "${controller}" on the v2 hierarchy, and it cannot be moved to v1 (${result.stderr.trim()}); crun cannot run here`)
    }
    logger?.info('moved a cgroup controller from the v2 hierarchy to v1 so crun accepts the hybrid layout', { controller, target })
  }
  // The kernel moves the controller asynchronously (host-facts §3: ~2 s on the way back).
  for (let i = 0; i < 100 && unifiedControllers(detectCgroups()).length > 0; i++) await new Promise((r) => setTimeout(r, 20))
  info = detectCgroups()
  return info
}

/** Reads whether the guest's cgroup saw an OOM kill (v1: memory.oom_control; v2: memory.events). */
export function readOomKills(info: CgroupInfo, cgroupsPath: string): number {
  const file = info.layout === 'v2'
    ? `${info.unifiedRoot}${cgroupsPath}/memory.events`
    : `${info.v1Mounts.get('memory')}${cgroupsPath}/memory.oom_control`
  try {
    const match = /^oom_kill (\d+)$/m.exec(readFileSync(file, 'utf8'))
    return match ? Number(match[1]) : 0
  } catch {
    return 0
  }
}

/** CPU time the guest has used, in microseconds. */
export function readCpuUsageUs(info: CgroupInfo, cgroupsPath: string): number {
  try {
    if (info.layout === 'v2') {
      const match = /^usage_usec (\d+)$/m.exec(readFileSync(`${info.unifiedRoot}${cgroupsPath}/cpu.stat`, 'utf8'))
      return match ? Number(match[1]) : 0
    }
    const mount = info.v1Mounts.get('cpuacct') ?? info.v1Mounts.get('cpu')
    return Math.round(Number(readFileSync(`${mount}${cgroupsPath}/cpuacct.usage`, 'utf8').trim()) / 1000)
  } catch {
    return 0
  }
}

export function readMemoryLimitBytes(info: CgroupInfo, cgroupsPath: string): number | undefined {
  try {
    if (info.layout === 'v2') return Number(readFileSync(`${info.unifiedRoot}${cgroupsPath}/memory.max`, 'utf8').trim())
    return Number(readFileSync(`${info.v1Mounts.get('memory')}${cgroupsPath}/memory.limit_in_bytes`, 'utf8').trim())
  } catch {
    return undefined
  }
}
