import type { Command } from 'commander'
import { client } from './common.js'
import { info, printJson, printTable } from '../output.js'

// `hangar orgs …`: organizations and their members (issue 5). A new org's first token (an org
// token for its first member) is shown once, on stdout, as the last line.

export function registerOrgs(program: Command): void {
  const orgs = program.command('orgs').alias('org').description('manage organizations and their members')

  orgs.command('create <slug>')
    .description('create an organization; prints its first org token (shown once)')
    .option('--name <name>', 'display name (default: the slug)')
    .option('--member <name>', 'the first member, who gets the token', 'owner')
    .option('--json', 'print as JSON (has `token`)')
    .action(async (slug: string, opts) => {
      const created = await client().createOrg(slug, { ...(opts.name ? { name: opts.name } : {}), member: opts.member })
      if (opts.json) { printJson(created); return }
      info(`Organization ${created.slug} created (member ${opts.member}, admin). Its org token, shown once:`)
      info(`  use it with HANGAR_API_TOKEN=<token>, or comma-join it with your current token to act in both orgs`)
      process.stdout.write(created.token + '\n')
    })

  orgs.command('list')
    .alias('ls')
    .description('list the organizations your token(s) reach')
    .option('--json', 'print as JSON')
    .action(async (opts) => {
      const { orgs: list } = await client().listOrgs()
      if (opts.json) printJson(list)
      else printTable(list.map((o) => ({ slug: o.slug, name: o.name, members: o.members, created: o.created_at })), ['slug', 'name', 'members', 'created'])
    })

  const members = orgs.command('members').description("manage an organization's members")
  members.command('list <org>')
    .option('--json', 'print as JSON')
    .action(async (org: string, opts) => {
      const { members: list } = await client().listMembers(org)
      if (opts.json) printJson(list)
      else printTable(list.map((m) => ({ name: m.name, role: m.role, added: m.created_at })), ['name', 'role', 'added'])
    })
  members.command('add <org> <name>')
    .description("add a member; prints the member's token (shown once)")
    .option('--role <role>', 'admin, member or viewer (viewers get a readonly token)', 'member')
    .option('--json', 'print as JSON (has `token`)')
    .action(async (org: string, name: string, opts) => {
      const added = await client().addMember(org, name, opts.role)
      if (opts.json) { printJson(added); return }
      info(`${added.name} is now a ${added.role} of ${org}. Their token, shown once:`)
      process.stdout.write(added.token + '\n')
    })
  members.command('remove <org> <name>')
    .description('remove a member and revoke every token issued to them')
    .option('--json', 'print as JSON')
    .action(async (org: string, name: string, opts) => {
      const removed = await client().removeMember(org, name)
      if (opts.json) printJson(removed)
      else info(`Removed ${name} from ${org}; revoked ${removed.revoked_tokens} token(s).`)
    })
}
