import type { Autostop } from '../core/index.js'

// The autostop decision for one pass, as a pure function (reference §4.2):
//   - per region with more than one running Machine: excess = running − (over_soft + 1);
//     if excess ≥ 1, stop (or suspend) exactly one Machine;
//   - a region's only running Machine is stopped when its load is 0;
//   - min_machines_running counts only in the primary region;
//   - at most one Machine per region per pass; autostop never creates or destroys.
// The loop that calls this lives in autostop-loop.ts; it acts only on this host's Machines so
// that several proxies computing the same decision stop each Machine once.

export interface AutostopMachine {
  machineId: string
  region: string
  /** Only `started` Machines count as running. */
  running: boolean
  load: number
  softLimit: number
  /** When the proxy last saw traffic for this Machine (ms epoch); the idlest goes first. */
  lastActiveAt: number
}

export interface AutostopGroup {
  autostop: Autostop
  minMachinesRunning: number
  primaryRegion: string
  machines: AutostopMachine[]
}

export interface AutostopAction {
  machineId: string
  region: string
  action: 'stop' | 'suspend'
}

export function decideAutostop(group: AutostopGroup): AutostopAction[] {
  if (group.autostop === 'off') return []
  const action = group.autostop === 'suspend' ? 'suspend' : 'stop'
  const byRegion = new Map<string, AutostopMachine[]>()
  for (const machine of group.machines) {
    if (!machine.running) continue
    const list = byRegion.get(machine.region)
    if (list) list.push(machine)
    else byRegion.set(machine.region, [machine])
  }
  const actions: AutostopAction[] = []
  for (const [region, running] of [...byRegion].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const floor = region === group.primaryRegion ? group.minMachinesRunning : 0
    if (running.length <= floor) continue
    let stopOne: boolean
    if (running.length === 1) {
      stopOne = running[0]!.load === 0
    } else {
      const overSoft = running.filter((m) => m.load >= m.softLimit).length
      stopOne = running.length - (overSoft + 1) >= 1
    }
    if (!stopOne) continue
    // The least loaded, then the longest idle, then by id so every proxy picks the same one.
    const victim = [...running].sort((a, b) => a.load - b.load || a.lastActiveAt - b.lastActiveAt || (a.machineId < b.machineId ? -1 : 1))[0]!
    actions.push({ machineId: victim.machineId, region, action })
  }
  return actions
}
