/**
 * The machines every benchmark serves, and the query mix they are asked, built the same way for our
 * daemon (through FakeMachined) and for the anchors (a dnsmasq hosts file), from a fixed seed.
 *
 * Machine i (1-based) is `m00001`…: one A in 198.18.0.0/15 and one AAAA in 2001:2::/48, the ranges
 * RFC 2544 and RFC 5180 set aside for benchmarks. The query mix follows perf-anchors.md: about 90 %
 * existing names, evenly A/AAAA and bare/`.machine`, about 10 % unknown `xNNNNN.machine` names
 * (NXDOMAIN).
 */
import { parseAddress } from '../../src/registry-client/address.js';
import type { FakeMachine } from '../../test/support/fake-machined.js';

export function machineName(i: number): string {
  return `m${String(i).padStart(5, '0')}`;
}

export function machineIPv4(i: number): string {
  return `198.${18 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
}

export function machineIPv6(i: number): string {
  return `2001:2::${i.toString(16)}`;
}

import { prng } from '../../test/support/prng.js';

export { prng };

export const UNKNOWN_SHARE = 0.1;

/** dnsperf's input: `NAME TYPE` lines. */
export function queryLines(machines: number, lines: number, seed = 20261122): string[] {
  const random = prng(seed);
  const pick = (n: number): number => 1 + Math.floor(random() * n);
  const out: string[] = [];
  for (let q = 0; q < lines; q++) {
    const type = random() < 0.5 ? 'A' : 'AAAA';
    if (random() < UNKNOWN_SHARE) {
      out.push(`x${String(pick(machines)).padStart(5, '0')}.machine ${type}`);
      continue;
    }
    const name = machineName(pick(machines));
    out.push(`${random() < 0.5 ? name : `${name}.machine`} ${type}`);
  }
  return out;
}

/** The same names for dnsmasq (`--addn-hosts`): `ADDR NAME NAME.machine`. */
export function hostsFile(machines: number): string {
  const lines: string[] = [];
  for (let i = 1; i <= machines; i++) {
    const n = machineName(i);
    lines.push(`${machineIPv4(i)} ${n} ${n}.machine`, `${machineIPv6(i)} ${n} ${n}.machine`);
  }
  return `${lines.join('\n')}\n`;
}

function bytesOf(address: string): number[] {
  const bytes = parseAddress(address);
  if (!bytes) throw new Error(`bad fixture address ${address}`);
  return [...bytes];
}

/**
 * FakeMachined registrations for machines first..first+n-1 (TEST DOUBLE of machined): containers with
 * the fixture's addresses, leader `leader(i)`, root directory `rootDirectory(i)`, no network
 * interfaces (so the registry runs no `ip`).
 */
export function fakeMachines(
  n: number,
  leader: (i: number) => number,
  rootDirectory: (i: number) => string = () => '',
  first = 1,
): FakeMachine[] {
  const out: FakeMachine[] = [];
  for (let i = first; i < first + n; i++) {
    out.push({
      name: machineName(i),
      id: '',
      service: 'bench',
      class: 'container',
      leader: leader(i),
      rootDirectory: rootDirectory(i),
      netif: [],
      addresses: [
        [2, bytesOf(machineIPv4(i))],
        [10, bytesOf(machineIPv6(i))],
      ],
      timestamp: String(BigInt(Date.now()) * 1000n),
    });
  }
  return out;
}
