import { mkdirSync, symlinkSync, copyFileSync, chmodSync } from 'node:fs'
import { join } from 'node:path'

// A minimal root filesystem made from the host's busybox-static, for runtime tests that do not
// need an image from a registry.
export const BUSYBOX_APPLETS = ['sh', 'sleep', 'echo', 'cat', 'ls', 'env', 'hostname', 'httpd', 'wget', 'kill', 'ps', 'id', 'dd', 'head', 'yes', 'true', 'false', 'mkdir', 'rm', 'touch', 'sync', 'tr', 'nc', 'grep', 'seq', 'wc', 'date', 'uname', 'ip', 'ping']

export function makeBusyboxRootfs(dir: string): string {
  for (const sub of ['bin', 'proc', 'sys', 'dev', 'etc', 'tmp', 'www', 'var', 'root']) mkdirSync(join(dir, sub), { recursive: true })
  copyFileSync('/usr/bin/busybox', join(dir, 'bin/busybox'))
  chmodSync(join(dir, 'bin/busybox'), 0o755)
  for (const applet of BUSYBOX_APPLETS) symlinkSync('busybox', join(dir, 'bin', applet))
  return dir
}
