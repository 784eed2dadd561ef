import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { runCommand } from '../core/command.js'
import { ensureBridge, removeBridge, setupMachineNetwork, teardownMachineNetwork, macForIpv4 } from './machine-network.js'
import { hostVethName, machineNetnsName } from './addressing.js'

// A Machine's network as the netlink helper makes it, read back with `ip -j`.

const ipJson = async (args: string[]) => JSON.parse((await runCommand('ip', ['-j', ...args])).stdout) as Array<Record<string, unknown>>

test('a Machine gets its namespace, veth on the bridge, addresses and default routes; a failure leaves nothing', async (t) => {
  const suffix = randomBytes(3).toString('hex')
  const bridge = `hgn${suffix}`
  const machineId = randomBytes(7).toString('hex')
  const sixpn = `fdaa:0:77:0:9:0:${(parseInt(suffix.slice(0, 4), 16) | 0x1000).toString(16)}:2`
  t.after(async () => { await teardownMachineNetwork(machineId, sixpn); await removeBridge(bridge) })
  await ensureBridge({ name: bridge, gatewayCidr: '10.252.0.1/24' })

  const netnsPath = await setupMachineNetwork({ machineId, bridge, ipv4: '10.252.0.7', ipv4Prefix: 24, gatewayIpv4: '10.252.0.1', sixpn })
  assert.equal(netnsPath, `/var/run/netns/${machineNetnsName(machineId)}`)
  const netns = machineNetnsName(machineId)
  const [eth0] = await ipJson(['-n', netns, 'addr', 'show', 'dev', 'eth0'])
  assert.equal(eth0!.address, macForIpv4('10.252.0.7'))
  assert.ok((eth0!.flags as string[]).includes('UP'))
  const addresses = (eth0!.addr_info as Array<{ local: string; prefixlen: number }>).map((a) => `${a.local}/${a.prefixlen}`)
  assert.ok(addresses.includes('10.252.0.7/24') && addresses.includes(`${sixpn}/112`), addresses.join(' '))
  const [lo] = await ipJson(['-n', netns, 'link', 'show', 'dev', 'lo'])
  assert.ok((lo!.flags as string[]).includes('UP'))
  assert.deepEqual((await ipJson(['-n', netns, 'route', 'show', 'default'])).map((r) => r.gateway), ['10.252.0.1'])
  assert.deepEqual((await ipJson(['-6', '-n', netns, 'route', 'show', 'default'])).map((r) => [r.gateway, r.dev]), [['fe80::1', 'eth0']])
  const [veth] = await ipJson(['-d', 'link', 'show', 'dev', hostVethName(machineId)])
  assert.equal(veth!.master, bridge)
  assert.ok((veth!.flags as string[]).includes('UP'))
  assert.deepEqual((await ipJson(['-6', 'addr', 'show', 'dev', hostVethName(machineId)])).flatMap((l) => l.addr_info as unknown[]), [], 'the bridge port has no IPv6 address')
  assert.equal((await ipJson(['-6', 'route', 'show', `${sixpn}/128`]))[0]?.dev, bridge)
  const ping = await runCommand('ip', ['netns', 'exec', netns, 'ping', '-c1', '-W2', '10.252.0.1'], { allowFailure: true })
  assert.equal(ping.code, 0, ping.stdout + ping.stderr)
  await teardownMachineNetwork(machineId, sixpn)
  assert.ok(!existsSync(netnsPath))

  // A bridge that is not there: the error says which step failed, and nothing is left behind.
  const other = randomBytes(7).toString('hex')
  await assert.rejects(setupMachineNetwork({ machineId: other, bridge: `hgx${suffix}`, ipv4: '10.252.0.8', ipv4Prefix: 24, gatewayIpv4: '10.252.0.1', sixpn }),
    (err: Error) => /cannot set up the network of hangar-[0-9a-f]+: no interface hgx/.test(err.message))
  assert.ok(!existsSync(`/var/run/netns/${machineNetnsName(other)}`))
  assert.equal((await runCommand('ip', ['link', 'show', 'dev', hostVethName(other)], { allowFailure: true })).code, 1)
})
