/**
 * Builds MachineRecords for tests of the pure parts (resolver, userdb) without a bus.
 */
import { isLinkLocal, parseAddress } from '../../src/registry-client/address.js';
import type { IdRange, InnerAccount, MachineClass, MachineRecord } from '../../src/registry-client/view.js';

export interface RecordSpec {
  name: string;
  class?: MachineClass;
  service?: string;
  leader?: number;
  /** Host ifindexes; names are `ve-<name>` (first 15 chars) plus a suffix for the second and later. */
  netif?: number[];
  addresses?: string[];
  uidMap?: IdRange[];
  gidMap?: IdRange[];
  innerUsers?: InnerAccount[];
  innerGroups?: InnerAccount[];
  leaderAlive?: boolean;
  rootDirectory?: string;
}

export function machineRecord(spec: RecordSpec): MachineRecord {
  const netif = spec.netif ?? [];
  const scope = netif.length === 1 ? (netif[0] ?? 0) : 0;
  return {
    name: spec.name,
    id: '',
    class: spec.class ?? 'container',
    service: spec.service ?? 'test',
    unit: `machine-${spec.name}.scope`,
    leader: spec.leader ?? 4242,
    rootDirectory: spec.rootDirectory ?? '',
    networkInterfaces: netif.map((ifindex, i) => ({
      ifindex,
      name: `ve-${spec.name}`.slice(0, 15 - (i ? 1 : 0)) + (i ? String(i) : ''),
    })),
    state: 'running',
    timestamp: 0n,
    timestampMonotonic: 0n,
    objectPath: `/org/freedesktop/machine1/machine/${spec.name}`,
    addresses: (spec.addresses ?? []).map((text) => {
      const bytes = parseAddress(text);
      if (!bytes) throw new Error(`bad test address ${text}`);
      return {
        family: bytes.length === 4 ? 4 : 6,
        address: text,
        bytes,
        scope,
        linkLocal: isLinkLocal(bytes),
      };
    }),
    addressSource: spec.addresses ? 'machined' : 'none',
    addressError: undefined,
    addressesCheckedAt: spec.addresses ? 1 : 0,
    uidMap: spec.uidMap,
    gidMap: spec.gidMap ?? spec.uidMap,
    innerUsers: spec.innerUsers,
    innerGroups: spec.innerGroups,
    leaderAlive: spec.leaderAlive ?? true,
  };
}
