import { test } from 'node:test'
import assert from 'node:assert/strict'
import { request } from 'node:http'
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushBusyboxImage, pushHttpServerImage, HTTP_SERVER_BODY, type LayerEntry } from './kit/images.js'
import { startAgentHost, type AgentHost } from './kit/agent-host.js'
import { isIllegalState, isNotFound, type CreateMachineRequest, type MachineConfig } from '../src/core/index.js'
import { eventually } from './kit/eventually.js'
import { GUEST_INIT_PATH } from '../src/runtime/index.js'

// The agent with real parts: crun guests under conmon, images from a real registry, overlay
// rootfs, network namespaces. Each user-visible behaviour of a Machine's lifecycle.

const EXTRA_APPLETS: LayerEntry[] = ['tr', 'seq', 'wc', 'grep', 'date', 'ip', 'nc', 'uname', 'ping', 'stat'].map((a) => ({ path: `bin/${a}`, type: 'symlink', target: '/usr/bin/busybox' }))

const httpGet = (host: string, port: number, path = '/'): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
  const req = request({ host, port, path, timeout: 3000 }, (res) => {
    let body = ''
    res.on('data', (c) => { body += c })
    res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
  })
  req.on('error', reject)
  req.on('timeout', () => req.destroy(new Error('timeout')))
  req.end()
})


test('agent: Machines from registry images through their whole lifecycle', { timeout: 180_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let host: AgentHost | undefined
  t.after(async () => {
    await host?.close()
    await registry?.stop()
  })
  registry = await startRegistry()
  const busybox = `${registry.host}/busybox:v1`
  const http = `${registry.host}/http:v1`
  await pushBusyboxImage(registry, 'busybox:v1', { extraLayers: [EXTRA_APPLETS] })
  await pushHttpServerImage(registry, 'http:v1')
  host = await startAgentHost()
  const agent = host.agent
  const app = 'lifecycle'
  const create = (config: Partial<MachineConfig> & { image: string }, extra: Partial<CreateMachineRequest> = {}) =>
    agent.createMachine({ app, org: 'personal', network: 1, request: { config, ...extra } })

  await t.test('create boots an http server Machine that the host reaches on its private address', async () => {
    const machine = await create({ image: http, env: { HELLO: 'world' } })
    assert.equal(machine.state, 'started')
    assert.match(machine.id, /^[0-9a-f]{14}$/)
    assert.match(machine.instance_id, /^[0-9A-Z]{26}$/)
    assert.match(machine.private_ip, /^fdaa:0:1:/)
    assert.equal(machine.image_ref.repository, 'http')
    assert.equal(machine.image_ref.tag, 'v1')
    const route = agent.routes().find((r) => r.machineId === machine.id)!
    const res = await eventually('the guest http server', () => httpGet(route.address, 8080))
    assert.equal(res.body, HTTP_SERVER_BODY)
    const env = await agent.execMachine(app, machine.id, { command: ['env'] })
    for (const expected of [`FLY_MACHINE_ID=${machine.id}`, `FLY_APP_NAME=${app}`, 'FLY_REGION=tst', `FLY_PRIVATE_IP=${machine.private_ip}`, `FLY_MACHINE_VERSION=${machine.instance_id}`, 'FLY_PROCESS_GROUP=app', 'FLY_VM_MEMORY_MB=256', 'PRIMARY_REGION=tst', 'HELLO=world', `FLY_IMAGE_REF=${registry!.host}/http:v1@sha256:`]) {
      assert.ok(env.stdout.includes(expected), `env has ${expected}:\n${env.stdout}`)
    }
    const hosts = await agent.execMachine(app, machine.id, { command: ['cat', '/etc/hosts'] })
    assert.match(hosts.stdout, new RegExp(`${machine.private_ip.replace(/:/g, ':')}\\s+fly-local-6pn`))
    const hostname = await agent.execMachine(app, machine.id, { command: ['hostname'] })
    assert.equal(hostname.stdout.trim(), machine.id)
    await agent.destroyMachine(app, machine.id, { force: true })
  })

  await t.test('a Machine reaches the host; files, processes and metadata shape the guest', async () => {
    const gateway = host!.subnet.replace(/\.0\/\d+$/, '.1')
    const machine = await create({
      image: busybox,
      init: { cmd: ['sleep', '1000'] },
      processes: [{ cmd: ['sh', '-c', 'echo "$ROLE" > /role; exec sleep 1000'], env: { ROLE: 'worker' } }],
      files: [{ guest_path: '/etc/app/config.json', raw_value: Buffer.from('{"ok":true}').toString('base64'), mode: 0o600 }],
      metadata: { fly_process_group: 'worker' },
    })
    const ping = await agent.execMachine(app, machine.id, { command: ['ping', '-c', '1', '-W', '2', gateway] })
    assert.equal(ping.exit_code, 0, `the Machine reaches the host's bridge address ${gateway}: ${ping.stdout}${ping.stderr}`)
    assert.equal((await agent.execMachine(app, machine.id, { command: ['cat', '/etc/app/config.json'] })).stdout, '{"ok":true}')
    assert.equal((await agent.execMachine(app, machine.id, { command: ['stat', '-c', '%a', '/etc/app/config.json'] })).stdout.trim(), '600')
    assert.equal((await agent.execMachine(app, machine.id, { command: ['cat', '/role'] })).stdout, 'worker\n', 'processes[0] replaced the command and added its env')
    assert.match((await agent.execMachine(app, machine.id, { command: ['env'] })).stdout, /FLY_PROCESS_GROUP=worker/)
    await agent.destroyMachine(app, machine.id, { force: true })
  })

  await t.test('ps lists the guest processes', async () => {
    const machine = await create({ image: http })
    // tini execs the main process a moment after the guest is started.
    const ps = await eventually('httpd in the process list', async () => { const list = await agent.processes(app, machine.id); return list.some((p) => p.command.startsWith('httpd')) ? list : undefined })
    assert.ok(ps.some((p) => p.command.startsWith(GUEST_INIT_PATH)))
    await agent.destroyMachine(app, machine.id, { force: true })
    assert.equal(agent.getMachine(app, machine.id).state, 'destroyed')
  })

  await t.test('stop resets the rootfs; start boots again; suspend keeps memory; destroy needs a stopped Machine', async () => {
    const machine = await create({ image: busybox, init: { cmd: ['sh', '-c', 'echo booted >> /boot.log; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done'] }, stop_config: { signal: 'SIGTERM', timeout: '2s' } })
    const count = async () => Number((await agent.execMachine(app, machine.id, { command: ['cat', '/tmp/count'] })).stdout.trim() || 0)
    await eventually('the counter', async () => (await count()) > 2)
    await agent.execMachine(app, machine.id, { command: ['touch', '/written-by-guest'] })
    await assert.rejects(agent.destroyMachine(app, machine.id, {}), (err: unknown) => isIllegalState(err) && err.currentState === 'started')
    await assert.rejects(agent.startMachine(app, machine.id), (err: unknown) => isIllegalState(err) && /unable to start machine from current state: started/.test(err.message))

    await agent.suspendMachine(app, machine.id)
    assert.equal(agent.getMachine(app, machine.id).state, 'suspended')
    await agent.startMachine(app, machine.id)
    assert.equal(agent.getMachine(app, machine.id).state, 'started')
    const resumedFrom = await count()
    assert.ok(resumedFrom > 2, 'a resumed Machine keeps its memory: the loop went on from where it was')
    assert.equal((await agent.execMachine(app, machine.id, { command: ['cat', '/boot.log'] })).stdout, 'booted\n', 'resume is not a reboot')

    const macBefore = (await agent.execMachine(app, machine.id, { command: ['cat', '/sys/class/net/eth0/address'] })).stdout
    assert.equal((statSync(join(host!.driver.bundleDir(machine.id), 'config.json')).mode & 0o777), 0o600, 'the bundle (with the env) is root-only')
    assert.equal((statSync(host!.driver.bundleDir(machine.id)).mode & 0o777), 0o700)
    await agent.stopMachine(app, machine.id, {})
    const stopped = agent.getMachine(app, machine.id)
    assert.equal(stopped.state, 'stopped')
    const exit = stopped.events.find((e) => e.type === 'exit')!.request!.exit_event!
    assert.equal(exit.requested_stop, true)
    assert.equal(exit.exit_code, 143, 'tini reports the SIGTERM the stop sent')
    await agent.startMachine(app, machine.id)
    const fresh = await agent.execMachine(app, machine.id, { command: ['sh', '-c', 'cat /boot.log; ls /written-by-guest 2>&1'] })
    assert.match(fresh.stdout, /^booted\n.*No such file/s, 'a stop resets the rootfs')
    assert.equal((await agent.execMachine(app, machine.id, { command: ['cat', '/sys/class/net/eth0/address'] })).stdout, macBefore, 'same address, same MAC: the host’s neighbour cache stays right')
    await agent.stopMachine(app, machine.id, { signal: 'SIGKILL' })
    await agent.destroyMachine(app, machine.id, {})
    assert.ok(isNotFound(await agent.stopMachine(app, machine.id, {}).catch((e) => e)))
  })

  await t.test('restart policies, exit events with exit code, OOM kills and auto_destroy', async () => {
    const failing = await create({ image: busybox, init: { cmd: ['sh', '-c', 'exit 3'] }, restart: { policy: 'on-failure', max_retries: 2 } })
    const settled = await eventually('on-failure to give up', () => { const m = agent.getMachine(app, failing.id); return m.state === 'stopped' ? m : undefined })
    const exits = agent.events(app, failing.id, 50).filter((e) => e.type === 'exit')
    assert.equal(exits.length, 3, 'the first run and two retries')
    assert.ok(exits.every((e) => e.request?.exit_event?.exit_code === 3))
    assert.equal(settled.events[0]!.type, 'exit')

    const clean = await create({ image: busybox, init: { cmd: ['true'] }, restart: { policy: 'no' } })
    await eventually('a clean exit to stop the Machine', () => agent.getMachine(app, clean.id).state === 'stopped')

    const oom = await create({ image: busybox, guest: { memory_mb: 256, cpus: 1, cpu_kind: 'shared' }, init: { cmd: ['sh', '-c', 'a=$(head -c 600000000 /dev/zero | tr "\\0" x); echo survived'] }, restart: { policy: 'no' } })
    await eventually('the OOM kill', () => agent.getMachine(app, oom.id).state === 'stopped', 30_000)
    const oomExit = agent.events(app, oom.id).find((e) => e.type === 'exit')!.request!.exit_event!
    assert.equal(oomExit.oom_killed, true)
    assert.equal(oomExit.exit_code, 137)

    const oneShot = await create({ image: busybox, init: { cmd: ['sh', '-c', 'echo done'] }, auto_destroy: true, restart: { policy: 'no' } })
    await eventually('auto_destroy', () => agent.getMachine(app, oneShot.id).state === 'destroyed')

    const always = await create({ image: busybox, init: { cmd: ['sh', '-c', 'sleep 0.2; exit 0'] }, restart: { policy: 'always' } })
    await eventually('two restarts', () => agent.events(app, always.id, 50).filter((e) => e.type === 'exit').length >= 2)
    await eventually('a started state to stop from', () => agent.getMachine(app, always.id).state === 'started')
    await agent.destroyMachine(app, always.id, { force: true })
  })

  await t.test('update makes a new version and replaces a running guest; leases guard mutations', async () => {
    const machine = await create({ image: busybox, init: { cmd: ['sleep', '1000'] }, metadata: { team: 'a' } })
    const updated = await agent.updateMachine(app, machine.id, { config: { image: http } })
    assert.equal(updated.state, 'started')
    assert.notEqual(updated.instance_id, machine.instance_id)
    const versions = agent.versions(app, machine.id)
    assert.deepEqual(versions.map((v) => v.version), [updated.instance_id, machine.instance_id])
    await assert.rejects(agent.updateMachine(app, machine.id, { config: { image: http }, current_version: machine.instance_id }), /is at version/)
    const route = agent.routes().find((r) => r.machineId === machine.id)!
    assert.equal((await eventually('the new version to serve', () => httpGet(route.address, 8080))).body, HTTP_SERVER_BODY)

    const lease = agent.acquireLease(app, machine.id, { ttlSeconds: 30, description: 'deploy' })
    assert.equal(lease.status, 'success')
    await assert.rejects(agent.stopMachine(app, machine.id, {}), /active lease/)
    assert.throws(() => agent.acquireLease(app, machine.id, { ttlSeconds: 30 }), /already has a lease/)
    await agent.stopMachine(app, machine.id, {}, lease.data.nonce)
    agent.releaseLease(app, machine.id, lease.data.nonce)
    await agent.startMachine(app, machine.id)
    agent.updateMetadata(app, machine.id, { team: 'b', extra: 'x' }, { replace: false })
    assert.deepEqual(agent.getMetadata(app, machine.id), { team: 'b', extra: 'x' })
    assert.equal(agent.versions(app, machine.id).length, 2, 'metadata changes make no new version')
    await agent.destroyMachine(app, machine.id, { force: true })
  })

  await t.test('a bad image fails the create and leaves no Machine', async () => {
    const before = agent.listMachines(app, { includeDeleted: true }).length
    await assert.rejects(create({ image: `${registry!.host}/nope:v1` }), /not found|unknown|does not exist/i)
    assert.equal(agent.listMachines(app, { includeDeleted: true }).length, before)
  })

  await t.test('Machines outlive the agent: a reopened agent adopts its running guests', async () => {
    const machine = await create({ image: busybox, init: { cmd: ['sh', '-c', 'while :; do sleep 0.05; done'] } })
    const pidBefore = await eventually('the guest loop', async () => (await agent.processes(app, machine.id)).find((p) => p.command.includes('while'))?.pid)
    const reopened = await host!.reopen()
    assert.equal(reopened.getMachine(app, machine.id).state, 'started')
    const pidAfter = (await reopened.processes(app, machine.id)).find((p) => p.command.includes('while'))!.pid
    assert.equal(pidAfter, pidBefore, 'the same guest process kept running')
    await reopened.stopMachine(app, machine.id, { signal: 'SIGKILL' })
    await reopened.destroyMachine(app, machine.id, {})
  })
})
