/**
 * Runs a Registry and prints the view as JSON lines, so a test can run the registry *inside* a
 * World (where the machines' links and neighbours are) and wait on its events instead of polling.
 *
 * usage: node view-probe.js BUS_ADDRESS [OPTIONS_JSON]
 * lines: {"event":"ready"|"synced"|"change"|"accounts", "kind"?, "name"?, "t": epoch ms, "view": [...]}
 */
import { performance } from 'node:perf_hooks';
import { createLogger } from '../../src/log.js';
import { Registry } from '../../src/registry-client/sync.js';
import type { MachineRecord, ViewChange } from '../../src/registry-client/view.js';

export interface ProbeMachine {
  name: string;
  id: string;
  class: string;
  service: string;
  unit: string;
  leader: number;
  rootDirectory: string;
  networkInterfaces: { ifindex: number; name: string | null }[];
  state: string;
  timestamp: string;
  objectPath: string;
  addresses: { address: string; scope: number }[];
  addressSource: string;
  addressError: string | null;
  uidMap: { inner: number; outer: number; count: number }[] | null;
  gidMap: { inner: number; outer: number; count: number }[] | null;
  innerUsers: { name: string; id: number }[] | null;
  innerGroups: { name: string; id: number }[] | null;
  leaderAlive: boolean;
}

export interface ProbeLine {
  event: 'ready' | 'synced' | 'change' | 'accounts';
  /**
   * `synced`: machined's unique name, null for a sync without machined (the bus came back first,
   * and the last known machines stay): a test comparing with machined waits for a sync against it.
   */
  owner?: string | null;
  kind?: ViewChange['kind'];
  name?: string;
  t: number;
  view: ProbeMachine[];
}

export function serialize(m: MachineRecord): ProbeMachine {
  return {
    name: m.name,
    id: m.id,
    class: m.class,
    service: m.service,
    unit: m.unit,
    leader: m.leader,
    rootDirectory: m.rootDirectory,
    networkInterfaces: m.networkInterfaces.map((n) => ({ ifindex: n.ifindex, name: n.name ?? null })),
    state: m.state,
    timestamp: String(m.timestamp),
    objectPath: m.objectPath,
    addresses: m.addresses.map((a) => ({ address: a.address, scope: a.scope })),
    addressSource: m.addressSource,
    addressError: m.addressError ?? null,
    uidMap: m.uidMap ? [...m.uidMap] : null,
    gidMap: m.gidMap ? [...m.gidMap] : null,
    innerUsers: m.innerUsers ? [...m.innerUsers] : null,
    innerGroups: m.innerGroups ? [...m.innerGroups] : null,
    leaderAlive: m.leaderAlive,
  };
}

async function main(): Promise<void> {
  const [busAddress, optionsJson] = process.argv.slice(2);
  if (!busAddress) throw new Error('usage: view-probe.js BUS_ADDRESS [OPTIONS_JSON]');
  const extra = optionsJson ? (JSON.parse(optionsJson) as Record<string, number>) : {};
  const registry = new Registry({ busAddress, logger: createLogger('debug'), ...extra });
  const out = (line: Omit<ProbeLine, 't' | 'view'>): void => {
    // epoch milliseconds with sub-ms resolution: comparable with the test process's clock
    const full: ProbeLine = {
      ...line,
      t: performance.timeOrigin + performance.now(),
      view: registry.view.all().map(serialize),
    };
    process.stdout.write(`${JSON.stringify(full)}\n`);
  };
  registry.view.onChange((c) =>
    out({ event: 'change', kind: c.kind, ...(c.kind === 'reset' ? {} : { name: c.machine.name }) }),
  );
  registry.onSynced(() => out({ event: 'synced', owner: registry.status().machinedOwner ?? null }));
  await registry.start();
  out({ event: 'ready' });
  // the containers' passwd and group follow the first sync in one change
  void registry.whenAccountsRead().then(() => out({ event: 'accounts' }));
  const stop = (): void => {
    void registry.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1]?.endsWith('view-probe.js')) {
  main().catch((err: unknown) => {
    process.stderr.write(`view-probe: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
