import type { Command } from 'commander'
import { readFileSync } from 'node:fs'
import { attenuate, decodeToken, describeToken, PERMISSION_LOCATION, scopeCaveats, tokenId, TOKEN_KINDS } from '../../auth/index.js'
import { shellSplit } from '../../config/index.js'
import { client } from './common.js'
import { info, printJson, printTable } from '../output.js'

// `hangar tokens …` (reference §6, superfly/docs security/tokens): create deploy / org / readonly /
// machine-exec tokens, list them, revoke them on every API node, and narrow a token locally —
// attenuation needs no server: caveats are appended and the HMAC chain continued.

const collect = (value: string, previous: string[] = []) => [...previous, value]

/** Everything on stdin (the token to attenuate), or an error when nothing is piped in. */
function readStdin(): string {
  if (process.stdin.isTTY) throw new Error('pipe the token in: hangar tokens attenuate … < token-file (or echo "$TOKEN" | …)')
  return readFileSync(0, 'utf8')
}

export function registerTokens(program: Command): void {
  const tokens = program.command('tokens').alias('token').description('create, narrow, list and revoke tokens')

  tokens.command('create <kind>')
    .description(`create a token: ${TOKEN_KINDS.join(', ')}; prints it on stdout (shown once)`)
    .option('-o, --org <slug>', 'the organization (default: the one your token is for)')
    .option('-a, --app <app>', 'the app (deploy: required; machine-exec: optional)')
    .option('--machine <id>', 'machine-exec: only this Machine')
    .option('--command <cmd>', 'machine-exec: allowed command prefix, e.g. "ls -l" (repeatable; default any)', collect)
    .option('-x, --expiry <duration>', 'how long it lives, e.g. 720h (default 20 years)')
    .option('-n, --name <name>', 'a label for `hangar tokens list`')
    .option('--json', 'print as JSON (has `token`)')
    .action(async (kind: string, opts) => {
      if (!(TOKEN_KINDS as readonly string[]).includes(kind)) throw new Error(`unknown token kind ${JSON.stringify(kind)}: use ${TOKEN_KINDS.join(', ')}`)
      const created = await client().createToken({
        kind, ...(opts.org ? { org_slug: opts.org } : {}), ...(opts.app ? { app_name: opts.app } : {}), ...(opts.machine ? { machine_id: opts.machine } : {}),
        ...(opts.command ? { commands: (opts.command as string[]).map((c) => shellSplit(c, '--command')) } : {}),
        ...(opts.expiry ? { expiry: opts.expiry } : {}), ...(opts.name ? { name: opts.name } : {}),
      })
      if (opts.json) { printJson(created); return }
      info(`${created.kind} token ${created.id} for ${created.org_slug}${created.app_name ? `/${created.app_name}` : ''}, valid until ${created.expires_at}:`)
      process.stdout.write(created.token + '\n')
    })

  tokens.command('attenuate')
    .description('narrow the token on stdin without the server; prints the narrower token as the last line')
    .option('-a, --app <app>', 'only this app')
    .option('--machine <id>', 'only this Machine')
    .option('--volume <id>', 'only this volume')
    .option('--actions <letters>', 'only these actions: r (read) w (write) c (create) d (delete) C (control) or *')
    .option('-x, --expiry <duration>', 'expire after this long, e.g. 1h')
    .option('--json', 'print as JSON')
    .action((opts) => {
      const input = readStdin().split(/[\s,]+/).filter(Boolean)
      if (input.length === 0) throw new Error('no token on stdin')
      const caveats = scopeCaveats({ appId: opts.app, machineId: opts.machine, volumeId: opts.volume, actions: opts.actions, expiry: opts.expiry })
      let narrowed = 0
      const output = input.map((token) => {
        if (decodeToken(token).location !== PERMISSION_LOCATION) return token // discharges travel as they are
        narrowed++
        return attenuate(token, caveats)
      })
      if (narrowed === 0) throw new Error('stdin holds only discharge tokens; give the permission token too')
      const joined = output.join(',')
      if (opts.json) { printJson({ token: joined, token_id: tokenId(output.find((t) => decodeToken(t).location === PERMISSION_LOCATION)!), caveats: describeToken(output[0]!).summary }); return }
      for (const line of describeToken(output.find((t) => decodeToken(t).location === PERMISSION_LOCATION)!).summary) info(`  ${line}`)
      process.stdout.write(joined + '\n')
    })

  tokens.command('list')
    .alias('ls')
    .description("list an organization's tokens (ids and scope; tokens themselves are never kept)")
    .option('-o, --org <slug>', 'the organization')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const { tokens: list } = await client().listTokens(opts.org)
      if (opts.json) { printJson(list); return }
      printTable(list.map((t) => ({ id: t.id, kind: t.kind, scope: [t.app_name, t.machine_id].filter(Boolean).join('/') || t.org_slug, name: t.name, expires: t.expires_at.slice(0, 10), revoked: t.revoked ? 'yes' : '' })), ['id', 'kind', 'scope', 'name', 'expires', 'revoked'])
    })

  tokens.command('revoke <token>')
    .description('revoke a token by id (from `tokens list`), by the token itself, or "-" for the token on stdin; takes effect on every API node')
    .option('--json', 'print as JSON')
    .action(async (target: string, opts) => {
      const value = target === '-' ? readStdin().trim().split(/[\s,]+/)[0] ?? '' : target
      const result = await client().revokeToken(value.startsWith('fm2_') ? { token: value } : { token_id: value })
      if (opts.json) printJson(result)
      else info(`Revoked token ${result.revoked} of ${result.org_slug} (confirmed by ${result.nodes.length} API node(s)); tokens attenuated from it are revoked too.`)
    })

  tokens.command('current')
    .description('what the token(s) you use can reach')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const { tokens: list } = await client().currentTokens()
      if (opts.json) printJson(list)
      else printTable(list.map((t) => ({ id: t.token_id ?? '', org: t.org_slug, apps: t.apps.join(',') || '(all)', machine: t.restricted_to_machine ?? '' })), ['id', 'org', 'apps', 'machine'])
    })
}
