import { ALL_STATES, IllegalStateError, type MachineState } from '../core/index.js'

// A Machine's lifecycle (reference §1.6; DESIGN "Machine lifecycle"). Persistent states are
// where a Machine rests; transient ones last while an operation runs; terminal ones end it.
//
//            create                     start                          stop
//   (none) ─────────► creating ──► created ─────► starting ──► started ─────► stopping ──► stopped
//                        │                          ▲  │         │ │ │ ╲ restart          │  │
//                        └──────────► starting ─────┘  ▼         │ │ │  ╲► restarting ─►  │  │
//                                                    failed      │ │ │ suspend            │  │
//                                                                │ │ └──► suspending ──► suspended
//                                                    update      │ │                      │ start (resume)
//                                started ──► replacing ──► started│ └─ exit (restart policy) ─► starting
//                      stopped|created|failed ──► updating ──► (same)                     │
//                    destroy: stopped|created|failed|suspended (+ started with force) ──► destroying ──► destroyed
//
// Each operation's accepted states are below; anything else is an IllegalStateError naming the
// current state (HTTP 412, as Fly answers "unable to start machine from current state").

export const TRANSITIONS: Readonly<Record<MachineState, readonly MachineState[]>> = {
  creating: ['created', 'starting', 'destroying', 'destroyed'],
  created: ['starting', 'updating', 'destroying'],
  starting: ['started', 'failed', 'stopped', 'destroying'],
  started: ['stopping', 'restarting', 'suspending', 'replacing', 'destroying', 'starting', 'stopped'],
  stopping: ['stopped', 'destroying'],
  stopped: ['starting', 'updating', 'destroying'],
  restarting: ['started', 'stopped', 'failed', 'starting'],
  suspending: ['suspended', 'started', 'stopped'],
  suspended: ['starting', 'stopping', 'destroying', 'replacing'],
  replacing: ['started', 'stopped', 'failed', 'starting'],
  updating: ['stopped', 'created', 'failed'],
  destroying: ['destroyed'],
  failed: ['starting', 'updating', 'destroying'],
  launch_failed: ['failed', 'destroying'],
  destroyed: [],
  replaced: [],
  migrated: [],
}

export function canTransition(from: MachineState, to: MachineState): boolean {
  return TRANSITIONS[from].includes(to)
}

/** The closed set of actions the agent takes on a Machine (CONVENTIONS §6). */
export type MachineAction =
  | 'start' | 'stop' | 'suspend' | 'restart' | 'update' | 'destroy' | 'force_destroy' | 'signal' | 'exec'
  | 'cordon' | 'lease' | 'metadata'

const NON_TERMINAL: MachineState[] = ALL_STATES.filter((s) => s !== 'destroyed' && s !== 'replaced' && s !== 'migrated')

export const ACTION_ACCEPTS: Readonly<Record<MachineAction, readonly MachineState[]>> = {
  start: ['stopped', 'created', 'suspended', 'failed'],
  stop: ['started', 'suspended'],
  suspend: ['started'],
  restart: ['started'],
  update: ['started', 'stopped', 'created', 'suspended', 'failed'],
  destroy: ['stopped', 'created', 'failed', 'suspended'],
  force_destroy: NON_TERMINAL,
  signal: ['started'],
  exec: ['started'],
  cordon: NON_TERMINAL,
  lease: NON_TERMINAL,
  metadata: NON_TERMINAL,
}

const REFUSALS: Record<MachineAction, string> = {
  start: 'unable to start machine from current state',
  stop: 'unable to stop machine, not currently started',
  suspend: 'unable to suspend machine, not currently started',
  restart: 'unable to restart machine, not currently started',
  update: 'unable to update machine from current state',
  destroy: 'unable to destroy machine, not currently stopped (use force=true to kill it)',
  force_destroy: 'machine is already destroyed',
  signal: 'unable to signal machine, not currently started',
  exec: 'unable to exec in machine, not currently started',
  cordon: 'unable to cordon machine in its current state',
  lease: 'unable to lease machine in its current state',
  metadata: 'unable to change metadata of machine in its current state',
}

export function assertActionAllowed(action: MachineAction, state: MachineState): void {
  if (ACTION_ACCEPTS[action].includes(state)) return
  throw new IllegalStateError(`${REFUSALS[action]}: ${state}`, state)
}

export function isSettled(state: MachineState): boolean {
  return !['creating', 'starting', 'stopping', 'restarting', 'suspending', 'destroying', 'launch_failed', 'updating', 'replacing'].includes(state)
}
