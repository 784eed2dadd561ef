#!/usr/bin/env node
import { Command, CommanderError } from 'commander'
import { registerCatalogCommand } from './catalog-command.js'

// Standalone entry for one catalog node, the same as `hangar catalog …`: used by the
// multi-process tests and the benchmark, which must not depend on the CLI's wiring.
//   node dist/src/catalog/process-main.js --db /tmp/a.db --gossip-addr 127.0.0.1:0 …

const program = new Command().name('hangar-catalog').exitOverride()
registerCatalogCommand(program)
program.parseAsync(['node', 'hangar-catalog', 'catalog', ...process.argv.slice(2)]).catch((err: unknown) => {
  // Commander has already printed its own usage errors.
  if (err instanceof CommanderError) process.exit(err.exitCode)
  process.stderr.write(`Error: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
