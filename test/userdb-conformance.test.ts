/**
 * Replays every request recorded against the real systemd-machined 252.39 (support/userdb-cases.ts,
 * machines in support/lab-machines.ts) against our userdb socket: no root, no machined needed.
 * Replies and whether the connection stays open must be identical, except for the requests in
 * EXPECTED_DIFFERENCES, which must differ and must name a row of DIFFERENCES_FROM_MACHINED.
 * userdb-machined-live.test.ts sends the same table to the real machined, live.
 */
import test from 'ava';
import { DIFFERENCES_FROM_MACHINED } from '../src/userdb/differences.js';
import { userDatabaseInterfaces } from '../src/userdb/service.js';
import { labTable } from './support/lab-machines.js';
import {
  caseGroups,
  cases,
  exchange,
  expectedDifference,
  EXPECTED_DIFFERENCES,
} from './support/userdb-cases.js';
import { startServer } from './support/varlink.js';

test('every expected difference names a documented row of DIFFERENCES_FROM_MACHINED', (t) => {
  const ids = new Set<string>(DIFFERENCES_FROM_MACHINED.map((d) => d.id));
  for (const [, id] of EXPECTED_DIFFERENCES) t.true(ids.has(id), id);
});

for (const group of caseGroups) {
  test(`replies are identical to machined 252 for ${group}`, async (t) => {
    const { path } = await startServer(t, (server) => {
      for (const iface of userDatabaseInterfaces(labTable(), 'io.systemd.Machine'))
        server.addInterface(iface);
    });
    for (const recorded of cases.filter((c) => c.group === group)) {
      const observed = await exchange(path, Buffer.from(recorded.send, 'base64'), recorded.replies.length);
      const expected = { replies: recorded.replies, end: recorded.end };
      const difference = expectedDifference(recorded.request);
      if (difference)
        t.notDeepEqual(observed, expected, `expected to differ (${difference}): ${recorded.request}`);
      else t.deepEqual(observed, expected, recorded.request);
    }
  });
}
