import { existsSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { AgentStore, hostIdFor } from '../agent/index.js'
import { listRootfsMounts, releaseRootfs, resetRootfs, unmountMachinesPool } from '../images/index.js'
import { bridgeNameFor, removeBridge, teardownMachineNetwork } from '../network/index.js'
import { CrunDriver } from '../runtime/index.js'

// `hangar down` on a host whose agent has stopped: stop every guest (Machines are recorded
// `stopped`, as after a host shutdown), remove their namespaces and mounts, the machines pool's
// mount, and the bridge.

export async function cleanupHost(dataDir: string, options: { bridge?: string } = {}): Promise<{ stopped: number }> {
  try {
    return await stopEverything(dataDir, options)
  } finally {
    // Last, and whatever failed before: a mounted pool keeps its loop device and its directory.
    await unmountMachinesPool(dataDir)
  }
}

async function stopEverything(dataDir: string, options: { bridge?: string }): Promise<{ stopped: number }> {
  if (!existsSync(join(dataDir, 'agent.db'))) return { stopped: 0 }
  const hostId = hostIdFor(dataDir)
  const store = new AgentStore(join(dataDir, 'agent.db'))
  const driver = await CrunDriver.create({ stateDir: join(dataDir, 'runtime'), cgroupParent: `hangar-${createHash('sha256').update(hostId).digest('hex').slice(0, 8)}` })
  let stopped = 0
  try {
    // Operations cut short by the shutdown must not resume against the states set below.
    for (const op of store.runningOperations()) store.finishOperation(op.id, 'rolled_back', 'host shut down (hangar down)')
    for (const machine of store.liveMachines()) {
      await driver.remove(machine.id)
      await teardownMachineNetwork(machine.id, machine.privateIp)
      await resetRootfs(join(dataDir, 'machines', machine.id)).catch(() => undefined)
      if (['started', 'starting', 'stopping', 'restarting', 'suspending', 'suspended', 'replacing'].includes(machine.state)) {
        store.transaction(() => {
          store.setState(machine.id, 'stopped')
          store.addEvent(machine.id, { type: 'exit', status: 'stopped', source: 'flyd', request: { reason: 'host shut down (hangar down)' } })
        })
        stopped++
      } else if (machine.state === 'creating') {
        store.setState(machine.id, 'destroyed')
      }
    }
    for (const id of await driver.list()) await driver.remove(id)
    for (const mount of await listRootfsMounts(join(dataDir, 'machines'))) await releaseRootfs(mount.machineDir).catch(() => undefined)
    await removeBridge(options.bridge ?? bridgeNameFor(hostId))
  } finally {
    await driver.close()
    store.close()
  }
  return { stopped }
}
