import type { Command } from 'commander'
import { Bus, NatsMachineController, NatsRouteSource } from '../../bus/index.js'
import { createLogger } from '../../core/index.js'
import { parseProxyArgs, runProxyProcess, PROXY_USAGE } from '../../proxy/index.js'
import { CatalogClient, createCatalogPeerSource, createCatalogRouteSource } from '../../catalog/index.js'

// `hangar proxy`: the proxy process `hangar host` runs. Its Machines come from the agents over
// NATS (--nats), or from a JSON file (--routes-file) for a standalone proxy.

function takeOption(argv: string[], name: string): { value: string | undefined; rest: string[] } {
  const index = argv.indexOf(name)
  if (index < 0) return { value: undefined, rest: argv }
  return { value: argv[index + 1], rest: [...argv.slice(0, index), ...argv.slice(index + 2)] }
}

export function registerProxy(program: Command): void {
  program.command('proxy')
    .description('run the proxy (hangar host starts it); see --help for its options')
    .allowUnknownOption(true)
    .helpOption(false)
    .argument('[options...]')
    .action(async (argv: string[]) => {
      if (argv.includes('--help') || argv.includes('-h')) { process.stdout.write(`${PROXY_USAGE}  --nats <url>                 NATS server(s): Machines from the agents\n  --catalog <url>              routes from this catalog node's subscription\n`); return }
      const { value: natsUrl, rest: withoutNats } = takeOption(argv, '--nats')
      const { value: catalogUrl, rest } = takeOption(withoutNats, '--catalog')
      const flags = parseProxyArgs(rest)
      const logger = createLogger('proxy', { base: { hostId: flags.hostId, region: flags.region } })
      if (!natsUrl) { await runProxyProcess({ flags, logger }); return }
      const bus = await Bus.connect(natsUrl, { name: `proxy-${flags.hostId}`, logger })
      // Routes from the catalog's subscription in a cluster; straight from the agents otherwise.
      if (catalogUrl) {
        const routeSource = createCatalogRouteSource(new CatalogClient(catalogUrl), { logger })
        // The backhaul's peers: every host's proxy_addr from the catalog's hosts table.
        const peerSource = createCatalogPeerSource(new CatalogClient(catalogUrl), { logger })
        const hostOf = (machineId: string) => routeSource.routes().find((r) => r.machineId === machineId)?.hostId
        await runProxyProcess({ flags, logger, routeSource, peerSource, controller: new NatsMachineController(bus, hostOf) })
        routeSource.close()
        peerSource.close()
      } else {
        const routeSource = new NatsRouteSource(bus, logger)
        await runProxyProcess({ flags, logger, routeSource, controller: new NatsMachineController(bus, (id) => routeSource.hostOf(id)) })
      }
      await bus.close()
      process.exit(0)
    })
}
