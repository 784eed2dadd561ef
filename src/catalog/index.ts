// Front door of src/catalog: Hangar's Corrosion — CRR tables with cr-sqlite semantics over
// SQLite, SWIM membership, broadcast and anti-entropy sync, the HTTP API, its client, the
// platform schema and the proxy's RouteSource.

export { startCatalogNode, type CatalogNode, type CatalogNodeOptions, type CatalogStats } from './catalog-node.js'
export { runCatalogProcess, type CatalogProcessOptions } from './catalog-process.js'
export { registerCatalogCommand, catalogOptionsFromFlags, type CatalogCommandFlags } from './catalog-command.js'
export {
  CatalogClient,
  type CatalogClientOptions,
  type CatalogSubscription,
  type JsonValue,
  type QueryResult,
  type SubscriptionChange,
  type SubscriptionChangeKind,
  type SubscriptionHandlers,
  type SubscriptionRow,
  type TransactionResponse,
} from './client.js'
export { createCatalogRouteSource, createCatalogPeerSource, type CatalogRouteSource, type CatalogPeerSource, type CatalogPeer } from './route-source.js'
export {
  PLATFORM_SCHEMA_SQL,
  configForCatalog,
  upsertHost,
  upsertApp,
  upsertMachine,
  upsertVolume,
  deleteMachine,
  deleteVolume,
  deleteApp,
  type HostRow,
  type AppRow,
  type MachineRow,
  type VolumeRow,
} from './platform-schema.js'
export type { StatementJson } from './statements.js'
export { CrrStore, StatementError, MEMBERS_TABLE, type CrrStoreOptions, type StatementInput, type TransactionOutcome, type ApplyOutcome } from './crr-store.js'
export { SchemaError, parseSchema, planSchemaChange, type SchemaPlan } from './schema.js'
export type { Changeset, ChangeRecord } from './changeset.js'
export { siteIdToUuid } from './changeset.js'
export type { MemberView, MemberState, SwimConfig } from './swim.js'
export type { DisseminationConfig } from './dissemination.js'
export { QUERY_ID_HEADER } from './api-server.js'
