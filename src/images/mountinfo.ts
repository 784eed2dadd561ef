import { readFile } from 'node:fs/promises'

// /proc/<pid>/mountinfo (proc(5)): one mount per line,
//   36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//   id parent major:minor root mountpoint options [optional fields...] - fstype source super-options
// Paths escape space, tab, newline and backslash as octal (\040 \011 \012 \134).

export interface MountInfo {
  id: number
  parentId: number
  root: string
  mountpoint: string
  options: string
  fstype: string
  source: string
  superOptions: string
}

export function unescapeMountPath(value: string): string {
  return value.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))
}

export function parseMountInfo(text: string): MountInfo[] {
  const mounts: MountInfo[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    const fields = line.split(' ')
    const separator = fields.indexOf('-', 6)
    if (separator < 0 || fields.length < separator + 3) continue
    mounts.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      root: unescapeMountPath(fields[3]!),
      mountpoint: unescapeMountPath(fields[4]!),
      options: fields[5]!,
      fstype: fields[separator + 1]!,
      source: unescapeMountPath(fields[separator + 2]!),
      superOptions: fields[separator + 3] ?? '',
    })
  }
  return mounts
}

export async function readMountInfo(): Promise<MountInfo[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'))
}
