import type { Command } from 'commander'
import { registerDaemons } from './daemons.js'
import { registerUp } from './up.js'
import { registerApps } from './apps.js'
import { registerMachines } from './machines.js'
import { registerLogs } from './logs.js'
import { registerProxy } from './proxy.js'
import { registerCatalogCommand } from '../../catalog/index.js'
import { registerOrgs } from './orgs.js'
import { registerTokens } from './tokens.js'
import { registerSecrets } from './secrets.js'
import { registerLaunch } from './launch.js'
import { registerDeploy } from './deploy.js'
import { registerScale } from './scale.js'
import { registerStatus } from './status.js'
import { registerReleases } from './releases.js'
import { registerDns } from './dns.js'

// Every `hangar` subcommand group registers itself here; one line per part.
export type RegisterCommands = (program: Command) => void

export const commandGroups: RegisterCommands[] = [registerUp, registerDaemons, registerApps, registerMachines, registerLogs, registerProxy, registerCatalogCommand, registerOrgs, registerTokens, registerSecrets, registerLaunch, registerDeploy, registerScale, registerStatus, registerReleases, registerDns]
