#!/usr/bin/env node
import { Command } from 'commander'
import { commandGroups } from './commands/index.js'
import { describeError } from './commands/common.js'

const program = new Command()
program
  .name('hangar')
  .description("Hangar: Fly.io's model (Machines, a proxy, gossip, a Machines API) on your own Linux servers")
  .showHelpAfterError()
for (const register of commandGroups) register(program)

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`Error: ${describeError(err)}\n`)
  process.exit(1)
})
