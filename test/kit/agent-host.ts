import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, randomInt } from 'node:crypto'
import { Agent, imagePort } from '../../src/agent/index.js'
import { ImageStore, listRootfsMounts, mountMachinesPool, releaseRootfs, unmountMachinesPool } from '../../src/images/index.js'
import { CrunDriver } from '../../src/runtime/index.js'
import { removeBridge, listMachineNetns, teardownMachineNetwork } from '../../src/network/index.js'
import { createLogger, silentLogger } from '../../src/core/index.js'

// One agent over the real crun driver and image store, in a temp data dir with its own bridge
// and subnet, for tests that drive the agent directly (no NATS, no API).

export interface AgentHost {
  agent: Agent
  driver: CrunDriver
  images: ImageStore
  dataDir: string
  bridge: string
  subnet: string
  hostId: string
  reopen(): Promise<Agent>
  close(): Promise<void>
}

export function randomSubnet(): string {
  return `10.${randomInt(100, 200)}.${randomInt(0, 256)}.0/24`
}

export async function startAgentHost(options: { region?: string } = {}): Promise<AgentHost> {
  const dataDir = mkdtempSync(join(tmpdir(), 'hangar-agent-'))
  const suffix = randomBytes(4).toString('hex')
  const hostId = `test${suffix}`
  const bridge = `hgb${suffix}`
  const subnet = randomSubnet()
  const logger = process.env.HANGAR_TEST_LOGS ? createLogger('agent') : silentLogger
  const driver = await CrunDriver.create({ stateDir: join(dataDir, 'runtime'), cgroupParent: `hangar-${hostId}`, logger })
  const images = new ImageStore({ dataDir: join(dataDir, 'images'), logger })
  await mountMachinesPool(dataDir, { logger })
  const open = () => Agent.open({ hostId, region: options.region ?? 'tst', dataDir, driver, images: imagePort(images), bridge, machineSubnet: subnet, logger })
  const host: AgentHost = {
    agent: await open(), driver, images, dataDir, bridge, subnet, hostId,
    async reopen() {
      await host.agent.close()
      host.agent = await open()
      return host.agent
    },
    async close() {
      const ids = host.agent.store.liveMachines().map((m) => ({ id: m.id, ip: m.privateIp }))
      await host.agent.close()
      for (const id of await driver.list()) await driver.remove(id)
      for (const { id, ip } of ids) await teardownMachineNetwork(id, ip)
      for (const id of listMachineNetns()) if (ids.some((m) => m.id === id)) await teardownMachineNetwork(id)
      for (const mount of await listRootfsMounts(join(dataDir, 'machines'))) await releaseRootfs(mount.machineDir).catch(() => undefined)
      await driver.close()
      await images.close()
      await unmountMachinesPool(dataDir)
      await removeBridge(bridge)
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
  return host
}
