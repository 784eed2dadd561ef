import type { MachineGuest } from '../core/index.js'

// reference §1.5 (fly-go MachinePresets): shared-cpu-Nx has 256 MB per CPU, performance-Nx 2048 MB
// per CPU; memory is a multiple of 256 MB, at most 2048 MB per shared CPU and 8192 MB per
// performance CPU, and at least the preset's per-CPU amount.

export interface VmSize { cpuKind: 'shared' | 'performance'; cpus: number; memoryMb: number }

export const VM_SIZES: Readonly<Record<string, VmSize>> = {
  'shared-cpu-1x': { cpuKind: 'shared', cpus: 1, memoryMb: 256 },
  'shared-cpu-2x': { cpuKind: 'shared', cpus: 2, memoryMb: 512 },
  'shared-cpu-4x': { cpuKind: 'shared', cpus: 4, memoryMb: 1024 },
  'shared-cpu-8x': { cpuKind: 'shared', cpus: 8, memoryMb: 2048 },
  'performance-1x': { cpuKind: 'performance', cpus: 1, memoryMb: 2048 },
  'performance-2x': { cpuKind: 'performance', cpus: 2, memoryMb: 4096 },
  'performance-4x': { cpuKind: 'performance', cpus: 4, memoryMb: 8192 },
  'performance-8x': { cpuKind: 'performance', cpus: 8, memoryMb: 16384 },
  'performance-16x': { cpuKind: 'performance', cpus: 16, memoryMb: 32768 },
}

export const DEFAULT_VM_SIZE = 'shared-cpu-1x'

export const MEMORY_MB_PER_CPU = {
  shared: { min: 256, max: 2048 },
  performance: { min: 2048, max: 8192 },
} as const

export function guestForSize(size: string): MachineGuest | undefined {
  const preset = VM_SIZES[size]
  if (!preset) return undefined
  return { cpu_kind: preset.cpuKind, cpus: preset.cpus, memory_mb: preset.memoryMb }
}

/** The guest a new Machine gets when fly.toml has no [[vm]] for its group. */
export const DEFAULT_GUEST: Readonly<MachineGuest> = Object.freeze(guestForSize(DEFAULT_VM_SIZE)!)

/** Why a guest is impossible, or undefined when it is fine. */
export function guestProblem(guest: MachineGuest): string | undefined {
  const kind = guest.cpu_kind ?? 'shared'
  const cpus = guest.cpus ?? 1
  const memory = guest.memory_mb ?? 0
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 16) return `cpus must be a whole number from 1 to 16, got ${cpus}`
  if (memory % 256 !== 0) return `memory must be a multiple of 256 MB, got ${memory} MB`
  const limits = MEMORY_MB_PER_CPU[kind]
  if (memory < limits.min * cpus) return `${cpus} ${kind} CPU(s) need at least ${limits.min * cpus} MB of memory, got ${memory} MB`
  if (memory > limits.max * cpus) return `${cpus} ${kind} CPU(s) allow at most ${limits.max * cpus} MB of memory, got ${memory} MB`
  return undefined
}
