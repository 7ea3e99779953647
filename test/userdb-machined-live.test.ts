/**
 * Conformance, live: the REAL systemd-machined 252 and mymachinesd run side by side in one World,
 * following the same real namespaced containers. Every request of the recorded table
 * (test/fixtures/machined-252-userdb.jsonl: 246 requests in 14 groups) goes to machined's
 * /run/systemd/userdb/io.systemd.Machine and to our socket of the same name; the replies and whether
 * the connection stays open must be identical, except where DIFFERENCES_FROM_MACHINED says why not.
 * (userdb-conformance.test.ts replays the same table against machined's recorded replies, without
 * root; this test proves the recording still describes the machined installed here.)
 */
import test from 'ava';
import { DIFFERENCES_FROM_MACHINED } from '../src/userdb/differences.js';
import { DaemonHandle } from './support/daemon.js';
import { MachinedLab, type LabMachineSpec } from './support/machined-lab.js';
import {
  caseGroups,
  cases,
  exchange,
  expectedDifference,
  EXPECTED_DIFFERENCES,
} from './support/userdb-cases.js';

/** The machines of the recording (test/support/lab-machines.ts), as real containers. */
const MACHINES: LabMachineSpec[] = [
  { name: 'testct', class: 'container', idMap: '0 655360 65536' },
  { name: 'my.ct', class: 'container', idMap: '0 720896 65536' },
  { name: 'abcdefghijklmnopqrstuvwxyz', class: 'container', idMap: '0 786432 65536' },
  { name: 'abcdefghijklmnopqrstuvw', class: 'container', idMap: '0 851968 65536' },
  { name: 'multi', class: 'container', idMap: '0 917504 1000\n1000 983040 1000' },
  { name: 'delta', class: 'container', idMap: '0 0 1' },
  { name: 'gone', class: 'container', idMap: '0 1048576 65536' },
  { name: 'edge', class: 'container', idMap: '0 4294901760 65535\n65535 1114112 1' },
  { name: 'twin', class: 'container', idMap: '0 655360 65536' },
  { name: 'hostns', class: 'container' },
];

const OURS = '/run/mymachinesd/io.systemd.Machine';

// testct and twin map the same host ids. machined picks the first owner in the order of a hashmap
// whose hash key is random per process (row "owner-order"); we pick the first registered (testct),
// and so did machined when the table was recorded. When this machined happens to iterate twin
// first, the requests that look up an id both own are compared with the recorded replies instead.
const OVERLAP = { from: 655360, to: 655360 + 65536 };
function touchesOverlap(request: string): boolean {
  return [...request.matchAll(/"[ug]id":(-?[0-9.eE+-]+)/g)].some(
    ([, id]) => Number(id) >= OVERLAP.from && Number(id) < OVERLAP.to,
  );
}

interface Ctx {
  lab: MachinedLab;
  daemon: DaemonHandle;
  /** This machined owns testct's and twin's shared ids through twin (its hash order). */
  machinedTwinFirst: boolean;
}

test.before(async (t) => {
  const lab = await MachinedLab.start(MACHINES);
  try {
    const daemon = await DaemonHandle.start(lab.world, [
      '--bus', lab.busAddress, '--no-dns', '--userdb', OURS, '--control', '/run/mymachinesd/control',
    ]); // prettier-ignore
    // machined keeps a machine whose leader died; both must then agree on it
    await lab.killLeader('gone');
    await daemon.waitFor(/machine gone: leader \d+ is gone/);
    const probe = await exchange(
      lab.machinedUserdbPath,
      Buffer.from(
        `{"method":"io.systemd.UserDatabase.GetUserRecord","parameters":{"service":"io.systemd.Machine","uid":${OVERLAP.from}}}\0`,
      ),
      1,
    );
    const machinedTwinFirst = probe.replies[0]?.includes('vu-twin-0') ?? false;
    t.context = { lab, daemon, machinedTwinFirst } satisfies Ctx;
  } catch (err) {
    await lab.dispose();
    throw err;
  }
});

test.after.always(async (t) => {
  const { lab, daemon } = t.context as Ctx;
  await daemon.stop();
  await lab.dispose();
});

test('the table has at least 40 requests and every expected difference is documented', (t) => {
  t.true(cases.length >= 40);
  const ids = new Set<string>(DIFFERENCES_FROM_MACHINED.map((d) => d.id));
  for (const [, id] of EXPECTED_DIFFERENCES) t.true(ids.has(id), id);
  t.true(ids.has('owner-order'));
  t.true(cases.some((c) => touchesOverlap(c.request)));
});

for (const group of caseGroups) {
  test.serial(`live: mymachinesd answers as the real machined 252 does — ${group}`, async (t) => {
    const { lab, machinedTwinFirst } = t.context as Ctx;
    if (machinedTwinFirst)
      t.log(
        'this machined iterates twin before testct: overlapping-id requests are compared with the recording',
      );
    for (const c of cases.filter((x) => x.group === group)) {
      const bytes = Buffer.from(c.send, 'base64');
      const machined =
        machinedTwinFirst && touchesOverlap(c.request)
          ? { replies: c.replies, end: c.end }
          : await exchange(lab.machinedUserdbPath, bytes, c.replies.length);
      const ours = await exchange(lab.world.hostPath(OURS), bytes, c.replies.length);
      const difference = expectedDifference(c.request);
      if (difference) {
        t.notDeepEqual(ours, machined, `expected to differ (${difference}): ${c.request}`);
        continue;
      }
      t.deepEqual(ours, machined, c.request);
    }
  });
}
