import type { Command } from 'commander'
import { registerDaemons } from './daemons.js'
import { registerUp } from './up.js'
import { registerApps } from './apps.js'
import { registerMachines } from './machines.js'
import { registerLogs } from './logs.js'

// Every `hangar` subcommand group registers itself here; one line per part.
export type RegisterCommands = (program: Command) => void

export const commandGroups: RegisterCommands[] = [registerUp, registerDaemons, registerApps, registerMachines, registerLogs]
