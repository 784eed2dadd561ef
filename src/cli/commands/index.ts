import type { Command } from 'commander'

// Every `hangar` subcommand group registers itself here; one line per part.
export type RegisterCommands = (program: Command) => void

export const commandGroups: RegisterCommands[] = []
