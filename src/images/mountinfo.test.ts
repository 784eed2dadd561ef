import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parseMountInfo, unescapeMountPath } from './mountinfo.js'

test('mountinfo lines parse, with optional fields and octal escapes', () => {
  const text = [
    '22 27 0:21 / /proc rw,relatime - proc proc rw',
    '36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue',
    '47 27 0:40 / /tmp/data\\040dir/m1/rootfs rw,relatime - overlay hangar-rootfs rw,lowerdir=0:1,upperdir=../upper,workdir=../work',
    'garbage line',
    '',
  ].join('\n')
  const mounts = parseMountInfo(text)
  assert.equal(mounts.length, 3)
  assert.deepEqual(mounts[1], { id: 36, parentId: 35, root: '/mnt1', mountpoint: '/mnt2', options: 'rw,noatime', fstype: 'ext3', source: '/dev/root', superOptions: 'rw,errors=continue' })
  assert.equal(mounts[2]!.mountpoint, '/tmp/data dir/m1/rootfs')
  assert.equal(mounts[2]!.fstype, 'overlay')
  assert.equal(mounts[2]!.source, 'hangar-rootfs')
  assert.equal(unescapeMountPath('a\\011b\\012c\\134d'), 'a\tb\nc\\d')
})
