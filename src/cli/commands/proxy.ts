import type { Command } from 'commander'
import { Bus, NatsMachineController, NatsRouteSource } from '../../bus/index.js'
import { createLogger } from '../../core/index.js'
import { parseProxyArgs, runProxyProcess, PROXY_USAGE } from '../../proxy/index.js'

// `hangar proxy`: the proxy process `hangar host` runs. Its Machines come from the agents over
// NATS (--nats), or from a JSON file (--routes-file) for a standalone proxy.

export function registerProxy(program: Command): void {
  program.command('proxy')
    .description('run the proxy (hangar host starts it); see --help for its options')
    .allowUnknownOption(true)
    .helpOption(false)
    .argument('[options...]')
    .action(async (argv: string[]) => {
      if (argv.includes('--help') || argv.includes('-h')) { process.stdout.write(`${PROXY_USAGE}  --nats <url>                 NATS server(s): Machines from the agents\n`); return }
      const natsIndex = argv.indexOf('--nats')
      const natsUrl = natsIndex >= 0 ? argv[natsIndex + 1] : undefined
      const rest = natsIndex >= 0 ? [...argv.slice(0, natsIndex), ...argv.slice(natsIndex + 2)] : argv
      const flags = parseProxyArgs(rest)
      const logger = createLogger('proxy', { base: { hostId: flags.hostId, region: flags.region } })
      if (!natsUrl) { await runProxyProcess({ flags, logger }); return }
      const bus = await Bus.connect(natsUrl, { name: `proxy-${flags.hostId}`, logger })
      const routeSource = new NatsRouteSource(bus, logger)
      await runProxyProcess({ flags, logger, routeSource, controller: new NatsMachineController(bus, routeSource) })
      await bus.close()
      process.exit(0)
    })
}
