/**
 * Replays every request recorded against the real systemd-machined 252.39 (fixtures/
 * machined-252-userdb.jsonl, machines in support/lab-machines.ts) against our userdb socket. Replies
 * and whether the connection stays open must be identical, except for requests listed in
 * EXPECTED_DIFFERENCES, which must differ and must name a row of DIFFERENCES_FROM_MACHINED.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { z } from 'zod';
import { DIFFERENCES_FROM_MACHINED, type DifferenceId } from '../src/userdb/differences.js';
import { userDatabaseInterfaces } from '../src/userdb/service.js';
import { labTable } from './support/lab-machines.js';
import { RawPeer, startServer } from './support/varlink.js';

const caseSchema = z.strictObject({
  group: z.string(),
  request: z.string(),
  send: z.base64(),
  replies: z.array(z.string()),
  end: z.enum(['open', 'closed']),
});
type RecordedCase = z.infer<typeof caseSchema>;

const fixture = join(import.meta.dirname, '..', '..', 'test', 'fixtures', 'machined-252-userdb.jsonl');
const cases: RecordedCase[] = readFileSync(fixture, 'utf8')
  .split('\n')
  .filter((line) => line !== '')
  .map((line) => caseSchema.parse(JSON.parse(line)));

/** Requests where we differ on purpose, matched on the request text. */
const EXPECTED_DIFFERENCES: readonly [RegExp, DifferenceId][] = [
  [/"method":"org\.varlink\.service\./, 'introspection'],
  [/Get(User|Group)Record","parameters":\{"service":"io\.systemd\.Machine"\},"more":true\}/, 'enumeration'],
];

// A call that always gets one reply: it proves the connection is still open and nothing else came.
const SENTINEL = '{"method":"io.systemd.UserDatabase.GetMemberships","parameters":{}}\0';
const SENTINEL_REPLY = '{"error":"io.systemd.UserDatabase.BadService","parameters":{}}';

interface Observed {
  readonly replies: readonly string[];
  readonly end: 'open' | 'closed';
}

async function replay(path: string, recorded: RecordedCase): Promise<Observed> {
  const peer = await RawPeer.connect(path);
  peer.send(Buffer.from(recorded.send, 'base64'));
  const replies: string[] = [];
  // Read what machined sent; then a sentinel tells an open connection from a closed one.
  for (let i = 0; i < recorded.replies.length; i++) {
    try {
      replies.push(await peer.next());
    } catch {
      break; // closed early: the comparison below reports it
    }
  }
  if (!peer.ended) peer.send(SENTINEL);
  for (;;) {
    let message: string;
    try {
      message = await peer.next();
    } catch {
      return { replies, end: 'closed' };
    }
    if (message === SENTINEL_REPLY) {
      peer.close();
      return { replies, end: 'open' };
    }
    replies.push(message);
  }
}

test('every expected difference names a documented row of DIFFERENCES_FROM_MACHINED', (t) => {
  const ids = new Set<string>(DIFFERENCES_FROM_MACHINED.map((d) => d.id));
  for (const [, id] of EXPECTED_DIFFERENCES) t.true(ids.has(id), id);
});

const groups = [...new Set(cases.map((c) => c.group))];
for (const group of groups) {
  test(`replies are identical to machined 252 for ${group}`, async (t) => {
    const { path } = await startServer(t, (server) => {
      for (const iface of userDatabaseInterfaces(labTable(), 'io.systemd.Machine'))
        server.addInterface(iface);
    });
    for (const recorded of cases.filter((c) => c.group === group)) {
      const observed = await replay(path, recorded);
      const expected: Observed = { replies: recorded.replies, end: recorded.end };
      const difference = EXPECTED_DIFFERENCES.find(([pattern]) => pattern.test(recorded.request));
      if (difference)
        t.notDeepEqual(observed, expected, `expected to differ (${difference[1]}): ${recorded.request}`);
      else t.deepEqual(observed, expected, recorded.request);
    }
  });
}
