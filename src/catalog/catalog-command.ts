import { readFileSync } from 'node:fs'
import type { Command } from 'commander'
import { InvalidArgumentError } from '../core/index.js'
import { runCatalogProcess, type CatalogProcessOptions } from './catalog-process.js'

// `hangar catalog …`: runs one catalog node in the foreground. The CLI registers it with
// `registerCatalogCommand(program)`; `hangar host` calls runCatalogProcess with the same options.

function list(value: string, previous: string[] = []): string[] {
  return [...previous, ...value.split(',').map((s) => s.trim()).filter((s) => s.length > 0)]
}

function positiveInt(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`"${value}" is not a positive integer`)
  return n
}

export interface CatalogCommandFlags {
  db: string
  gossipAddr: string
  advertiseAddr?: string
  apiAddr: string
  bootstrap?: string[]
  schema?: string[]
  platformSchema: boolean
  clusterId: string
  hostId?: string
  region?: string
  apiTokenFile?: string
  syncIntervalMs?: number
}

export function catalogOptionsFromFlags(flags: CatalogCommandFlags): CatalogProcessOptions {
  return {
    dbPath: flags.db,
    gossipAddr: flags.gossipAddr,
    apiAddr: flags.apiAddr,
    platformSchema: flags.platformSchema,
    clusterId: flags.clusterId,
    ...(flags.advertiseAddr ? { advertiseAddr: flags.advertiseAddr } : {}),
    ...(flags.bootstrap ? { bootstrap: flags.bootstrap } : {}),
    ...(flags.schema ? { schemaPaths: flags.schema } : {}),
    ...(flags.hostId ? { hostId: flags.hostId } : {}),
    ...(flags.region ? { region: flags.region } : {}),
    ...(flags.apiTokenFile ? { apiToken: readFileSync(flags.apiTokenFile, 'utf8').trim() } : {}),
    ...(flags.syncIntervalMs ? { syncIntervalMs: flags.syncIntervalMs } : {}),
  }
}

export function registerCatalogCommand(program: Command): void {
  program
    .command('catalog')
    .description("Run a catalog node (Hangar's Corrosion): replicated SQLite, SWIM membership, gossip and sync, HTTP API")
    .requiredOption('--db <path>', 'SQLite database file (created if missing)')
    .option('--gossip-addr <host:port>', 'gossip address: UDP for SWIM and broadcasts, TCP for sync', '127.0.0.1:4001')
    .option('--advertise-addr <host:port>', 'gossip address peers should use, if not the bound one')
    .option('--api-addr <host:port>', 'HTTP API address', '127.0.0.1:8081')
    .option('--bootstrap <host:port,...>', 'gossip addresses of nodes to join (repeatable)', list)
    .option('--schema <path>', 'extra schema file or directory of *.sql files (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--no-platform-schema', "do not include Hangar's platform schema (hosts, apps, machines, volumes)")
    .option('--cluster-id <id>', 'cluster id; nodes of other clusters are ignored', 'hangar')
    .option('--host-id <id>', "this host's id, gossiped with membership")
    .option('--region <region>', "this host's region")
    .option('--api-token-file <path>', 'require Authorization: Bearer <token> on the API')
    .option('--sync-interval-ms <ms>', 'anti-entropy round interval', positiveInt)
    .action(async (flags: CatalogCommandFlags) => {
      await runCatalogProcess(catalogOptionsFromFlags(flags))
    })
}
