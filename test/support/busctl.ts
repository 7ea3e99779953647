/**
 * Ground truth from the real `busctl` (a client that is not ours): machined's machine list, every
 * Machine property, and GetMachineAddresses, decoded from `busctl --json=short`.
 */
import { formatAddress } from '../../src/registry-client/address.js';
import type { MachinedLab } from './machined-lab.js';

export interface TruthMachine {
  name: string;
  class: string;
  service: string;
  path: string;
  id: string;
  unit: string;
  leader: number;
  rootDirectory: string;
  networkInterfaces: number[];
  state: string;
  timestamp: string;
  /** Addresses in machined's order, or the error text. */
  addresses: string[] | { error: string };
}

const M = ['org.freedesktop.machine1', '/org/freedesktop/machine1', 'org.freedesktop.machine1.Manager'];

async function busctl(lab: MachinedLab, args: string[]): Promise<{ ok: boolean; out: string; err: string }> {
  const r = await lab.exec('busctl', ['--no-pager', '--json=short', ...args]);
  return { ok: r.code === 0, out: r.stdout, err: r.stderr.trim() };
}

export async function machinedTruth(lab: MachinedLab): Promise<TruthMachine[]> {
  const list = await busctl(lab, ['call', ...M, 'ListMachines']);
  if (!list.ok) throw new Error(`busctl ListMachines: ${list.err}`);
  const entries = (JSON.parse(list.out) as { data: [string, string, string, string][][] }).data[0] ?? [];
  const result: TruthMachine[] = [];
  for (const [name, cls, service, path] of entries) {
    const props = await busctl(lab, [
      'get-property', 'org.freedesktop.machine1', path, 'org.freedesktop.machine1.Machine',
      'Id', 'Unit', 'Leader', 'RootDirectory', 'NetworkInterfaces', 'State', 'Timestamp',
    ]); // prettier-ignore
    if (!props.ok) throw new Error(`busctl get-property ${path}: ${props.err}`);
    const values = props.out
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { data: unknown }).data);
    const [id, unit, leader, root, netif, state, timestamp] = values;
    const addr = await busctl(lab, ['call', ...M, 'GetMachineAddresses', 's', name]);
    const addresses = addr.ok
      ? ((JSON.parse(addr.out) as { data: [number, number[]][][] }).data[0] ?? []).map(([, bytes]) =>
          formatAddress(Buffer.from(bytes)),
        )
      : { error: addr.err };
    result.push({
      name,
      class: cls,
      service,
      path,
      id: Buffer.from(id as number[]).toString('hex'),
      unit: String(unit),
      leader: Number(leader),
      rootDirectory: String(root),
      networkInterfaces: netif as number[],
      state: String(state),
      timestamp: String(timestamp),
      addresses,
    });
  }
  return result.sort((a, b) => a.name.localeCompare(b.name));
}
