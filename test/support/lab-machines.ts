/**
 * The machines of the machined 252 lab run whose userdb replies are vendored in
 * test/fixtures/machined-252-userdb.jsonl (registered over D-Bus in this order; machined's own
 * iteration order is its hashmap's). Names and maps are exactly those of the lab.
 */
import { MachineTable } from '../../src/registry-client/registry.js';
import type { IdRange } from '../../src/registry-client/view.js';
import { machineRecord, type RecordSpec } from './records.js';

const r = (inner: number, outer: number, count: number): IdRange => ({ inner, outer, count });

export const LAB_MACHINES: readonly RecordSpec[] = [
  // userns, 65536 ids at 655360: vu-testct-1000 = 656360
  { name: 'testct', uidMap: [r(0, 655360, 65536)] },
  // a dotted name: never any records (reference §7.2)
  { name: 'my.ct', uidMap: [r(0, 720896, 65536)] },
  // 26 characters: vu-<name>-N fits in 31 characters for N = 0..9 only
  { name: 'abcdefghijklmnopqrstuvwxyz', uidMap: [r(0, 786432, 65536)] },
  // 23 characters: N = 0..9999
  { name: 'abcdefghijklmnopqrstuvw', uidMap: [r(0, 851968, 65536)] },
  // two ranges: inner 0..999 at 917504, inner 1000..1999 at 983040
  { name: 'multi', uidMap: [r(0, 917504, 1000), r(1000, 983040, 1000)] },
  // what `unshare -r` gives: only inner 0 → host 0
  { name: 'delta', uidMap: [r(0, 0, 1)] },
  // leader killed after registration: machined keeps it, /proc/<leader>/uid_map is gone
  { name: 'gone', uidMap: [r(0, 1048576, 65536)], leaderAlive: false },
  // ids at the top of the 32-bit space; host 1114112 maps to the invalid inner 65535
  { name: 'edge', uidMap: [r(0, 4294901760, 65535), r(65535, 1114112, 1)] },
  // the same range as testct, registered later: testct owns the host ids
  { name: 'twin', uidMap: [r(0, 655360, 65536)] },
  // no user namespace: the identity map
  { name: 'hostns', uidMap: [r(0, 0, 4294967295)] },
  { name: '.host', class: 'host' },
];

export function labTable(extra: readonly RecordSpec[] = []): MachineTable {
  const table = new MachineTable();
  for (const spec of [...LAB_MACHINES, ...extra]) table.upsert(machineRecord(spec));
  return table;
}
