// Best-fit ranking of hosts for a new Machine (DESIGN "Placement"): among hosts that can hold it,
// prefer the one that would be fullest afterwards, by linear interpolation across its CPU and
// memory utilisation — packing hosts tightly keeps whole hosts free for big Machines. Pure: the
// market (offers over NATS) feeds it the hosts that answered.

export interface HostCapacity {
  hostId: string
  region: string
  capacity: { cpus: number; memoryMb: number }
  used: { cpus: number; memoryMb: number }
}

export interface MachineNeed { cpus: number; memoryMb: number }

export function fits(host: HostCapacity, need: MachineNeed): boolean {
  return host.used.cpus + need.cpus <= host.capacity.cpus && host.used.memoryMb + need.memoryMb <= host.capacity.memoryMb
}

/** Utilisation after placing `need`, in [0, 1]: the mean of the CPU and memory fractions. */
export function utilisationAfter(host: HostCapacity, need: MachineNeed): number {
  const cpu = (host.used.cpus + need.cpus) / host.capacity.cpus
  const memory = (host.used.memoryMb + need.memoryMb) / host.capacity.memoryMb
  return (cpu + memory) / 2
}

/** Hosts that fit, best first; ties broken by host id so the ranking is deterministic. */
export function rankBestFit<T extends HostCapacity>(hosts: readonly T[], need: MachineNeed): T[] {
  return hosts
    .filter((h) => fits(h, need))
    .map((h) => ({ h, score: utilisationAfter(h, need) }))
    .sort((a, b) => b.score - a.score || a.h.hostId.localeCompare(b.h.hostId))
    .map(({ h }) => h)
}
