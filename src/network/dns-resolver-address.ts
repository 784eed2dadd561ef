import { hostNumber } from './addressing.js'

// Where Machines find `.internal` DNS (reference §3.3: "The resolver is fdaa::3 on Machines").
//
// Every host bridge carries two resolver addresses, both in 6PN network 0, which no org has:
// - fdaa::3, Fly's address, for apps that name it themselves;
// - fdaa:0:0:<host number>::3, this host's own, which the agent writes into Machines'
//   /etc/resolv.conf. It is unique per host, so hosts that share a network namespace (tests, or
//   two data dirs on one server) each answer their own Machines — fdaa::3 can only be bound by one.
// Both are IPv6, so a query leaves the Machine from its 6PN address and the server knows the
// asker's org from the source address at once (reference §3.4), before the catalog has the
// Machine's row.

/** Fly's resolver address on every Machine. */
export const SIXPN_RESOLVER_ADDRESS = 'fdaa::3'

const hex16 = (n: number) => (n & 0xffff).toString(16)

/** This host's own resolver address: fdaa:0:0:<host hi>:<host lo>::3. */
export function hostResolverAddress(hostId: string): string {
  const host = hostNumber(hostId)
  return `fdaa:0:0:${hex16(host >>> 16)}:${hex16(host)}::3`
}
