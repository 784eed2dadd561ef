import { randomBytes } from 'node:crypto'

// reference §1.1: a Machine ID is 14 characters (Fly's are lowercase hex, e.g. 148ed193b95089)
// and is unrelated to its 6PN address; a version (instance_id) is a 26-character ULID.

export const MACHINE_ID_PATTERN = /^[0-9a-f]{14}$/

export function newMachineId(): string {
  return randomBytes(7).toString('hex')
}

export function isMachineId(value: string): boolean {
  return MACHINE_ID_PATTERN.test(value)
}

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

/** A ULID: 48-bit millisecond time then 80 random bits, Crockford base32, 26 characters.
 * Monotonic within one process so versions made in the same millisecond still sort. */
let lastUlidTime = -1
let lastUlidRandom: bigint = 0n
export function newUlid(now: number = Date.now()): string {
  let random: bigint
  if (now === lastUlidTime) {
    random = lastUlidRandom + 1n
  } else {
    random = BigInt('0x' + randomBytes(10).toString('hex'))
    lastUlidTime = now
  }
  lastUlidRandom = random
  let time = ''
  let t = now
  for (let i = 0; i < 10; i++) { time = CROCKFORD[t % 32] + time; t = Math.floor(t / 32) }
  let rand = ''
  let r = random
  for (let i = 0; i < 16; i++) { rand = CROCKFORD[Number(r % 32n)] + rand; r /= 32n }
  return time + rand
}

/** Fly's request ids are a ULID, a dash, then the region that served it (reference §1.1). */
export function newRequestId(region: string): string {
  return `${newUlid()}-${region}`
}

export function newNonce(): string {
  return randomBytes(16).toString('hex')
}

/** App and Machine names: DNS labels, since they appear in `<app>.internal` and hostnames. */
export const APP_NAME_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/
export const MACHINE_NAME_PATTERN = /^[a-zA-Z0-9](?:[a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?$/

const ADJECTIVES = ['quiet', 'brave', 'swift', 'calm', 'bold', 'bright', 'gentle', 'lively', 'proud', 'steady', 'silent', 'sunny', 'wild', 'young', 'ancient', 'autumn']
const NOUNS = ['river', 'meadow', 'forest', 'harbor', 'summit', 'canyon', 'glade', 'island', 'prairie', 'valley', 'breeze', 'ember', 'frost', 'thunder', 'willow', 'cedar']
/** A generated Machine name, like Fly's `quiet-river-1234`. */
export function newMachineName(): string {
  const bytes = randomBytes(4)
  return `${ADJECTIVES[bytes[0]! % ADJECTIVES.length]}-${NOUNS[bytes[1]! % NOUNS.length]}-${bytes.readUInt16BE(2) % 10000}`
}
