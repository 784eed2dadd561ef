import type { Command } from 'commander'
import { DNS_TYPE, queryDns, runDnsProcess, type DecodedRecord } from '../../network/index.js'

// `hangar dns`: the host's `.internal` resolver (hangar host runs it beside a catalog node), and
// `hangar dns <name> [type]`: one question to a resolver, printed like `dig +short`, for people
// checking what a Machine would see.

const collect = (value: string, previous: string[] = []) => [...previous, ...value.split(',').map((s) => s.trim()).filter(Boolean)]

const TYPE_NAMES = new Map<number, string>(Object.entries(DNS_TYPE).map(([name, number]) => [number, name]))
const RCODE_NAMES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED']

function recordText(record: DecodedRecord): string {
  return record.address ?? (record.text !== undefined ? JSON.stringify(record.text) : record.rdata.toString('hex'))
}

export function registerDns(program: Command): void {
  program.command('dns')
    .description('run the .internal DNS server (hangar host starts it); with a NAME, ask a DNS server one question')
    .argument('[name]', 'a name to look up instead of serving, e.g. myapp.internal')
    .argument('[type]', 'record type of the lookup (AAAA, TXT, A, SOA, …)', 'AAAA')
    .option('--catalog <url>', "the host's catalog node API (serving)")
    .option('--listen <addr>', 'address to serve on: ip, ip:port or [ipv6]:port (repeatable, comma-separated)', collect)
    .option('--host-id <id>', "this host's id: IPv4 queries come from this host's Machines")
    .option('--region <code>', "this host's region (for top<N>.nearest.of names asked from the host)")
    .option('--upstream <addr>', "resolvers for other names (default: the host's /etc/resolv.conf; repeatable)", collect)
    .option('--no-forward', 'refuse names outside .internal instead of forwarding them')
    .option('--ttl <seconds>', 'TTL of .internal answers', '5')
    .option('--server <addr>', "the server to ask (lookup; default Fly's resolver address, which every host with DNS serves)", 'fdaa::3')
    .option('--port <port>', "the server's port (lookup)", '53')
    .option('--tcp', 'ask over TCP (lookup)')
    .option('--json', 'print the whole answer as JSON (lookup)')
    .action(async (name: string | undefined, type: string, opts) => {
      if (name !== undefined) {
        const response = await queryDns(name, type, { server: String(opts.server).replace(/^\[(.*)\]$/, '$1'), port: Number(opts.port), transport: opts.tcp ? 'tcp' : 'udp' })
        if (opts.json) {
          process.stdout.write(JSON.stringify({ ...response, rcode: RCODE_NAMES[response.rcode] ?? response.rcode, answers: response.answers.map((r) => ({ name: r.name, type: TYPE_NAMES.get(r.type) ?? r.type, ttl: r.ttl, value: r.address ?? r.text })), authority: undefined, additional: undefined }, null, 2) + '\n')
        } else {
          for (const record of response.answers) process.stdout.write(recordText(record) + '\n')
        }
        if (response.rcode !== 0) {
          process.stderr.write(`${name}: ${RCODE_NAMES[response.rcode] ?? `rcode ${response.rcode}`}\n`)
          process.exitCode = 1
        }
        return
      }
      if (!opts.catalog) throw new Error('hangar dns: --catalog <url> is required to serve (or give a NAME to look up)')
      await runDnsProcess({
        catalogUrl: opts.catalog, listen: opts.listen ?? ['127.0.0.1:53'], hostId: opts.hostId, region: opts.region,
        upstreams: opts.forward === false ? [] : opts.upstream, ttl: Number(opts.ttl),
      })
    })
}
