import { test } from 'node:test'
import assert from 'node:assert/strict'
import { detectCgroups } from './cgroups.js'

// The three layouts a host may have (host-facts §0, §3), as /proc/self/mountinfo shows them.

const V1 = [
  '30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
  '31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu',
  '32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
  '33 30 0:29 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer',
  '34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct',
].join('\n')
const V2 = '30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot'
const HYBRID = `${V1}\n40 30 0:40 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw`

test('cgroup layouts: v1, v2 and hybrid are told apart, with each controller’s mount', () => {
  const v1 = detectCgroups(V1)
  assert.equal(v1.layout, 'v1')
  assert.equal(v1.v1Mounts.get('memory'), '/sys/fs/cgroup/memory')
  assert.equal(v1.v1Mounts.get('cpuacct'), '/sys/fs/cgroup/cpu,cpuacct')
  assert.equal(v1.unifiedRoot, undefined)
  const v2 = detectCgroups(V2)
  assert.equal(v2.layout, 'v2')
  assert.equal(v2.unifiedRoot, '/sys/fs/cgroup')
  assert.equal(v2.v1Mounts.size, 0)
  const hybrid = detectCgroups(HYBRID)
  assert.equal(hybrid.layout, 'hybrid')
  assert.equal(hybrid.unifiedRoot, '/sys/fs/cgroup/unified')
  assert.equal(hybrid.v1Mounts.get('freezer'), '/sys/fs/cgroup/freezer')
})

test('this host’s layout is detected from its real mountinfo', () => {
  const info = detectCgroups()
  assert.ok(['v1', 'v2', 'hybrid'].includes(info.layout))
  if (info.layout !== 'v2') assert.ok(info.v1Mounts.has('memory'), 'a v1 or hybrid host has a memory controller mount')
})
