/**
 * The userdb conformance table: requests recorded against the real systemd-machined 252.39 with the
 * machines of support/lab-machines.ts (fixtures/machined-252-userdb.jsonl, made by
 * fixtures/record-machined-userdb.py), the requests where we differ on purpose, and how one
 * request is exchanged on a fresh connection. Used by the recorded replay (no root needed) and by
 * the live comparison with the real machined.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { DifferenceId } from '../../src/userdb/differences.js';
import { RawPeer } from './varlink.js';

const caseSchema = z.strictObject({
  group: z.string(),
  request: z.string(),
  send: z.base64(),
  replies: z.array(z.string()),
  end: z.enum(['open', 'closed']),
});
export type RecordedCase = z.infer<typeof caseSchema>;

const fixture = join(import.meta.dirname, '..', '..', '..', 'test', 'fixtures', 'machined-252-userdb.jsonl');
export const cases: readonly RecordedCase[] = readFileSync(fixture, 'utf8')
  .split('\n')
  .filter((line) => line !== '')
  .map((line) => caseSchema.parse(JSON.parse(line)));

export const caseGroups: readonly string[] = [...new Set(cases.map((c) => c.group))];

/** Requests where we differ on purpose, matched on the request text; each names a documented row. */
export const EXPECTED_DIFFERENCES: readonly [RegExp, DifferenceId][] = [
  [/"method":"org\.varlink\.service\./, 'introspection'],
  [/Get(User|Group)Record","parameters":\{"service":"io\.systemd\.Machine"\},"more":true\}/, 'enumeration'],
];

export function expectedDifference(request: string): DifferenceId | undefined {
  return EXPECTED_DIFFERENCES.find(([pattern]) => pattern.test(request))?.[1];
}

// A call that always gets one reply: it proves the connection is still open and nothing else came.
const SENTINEL = '{"method":"io.systemd.UserDatabase.GetMemberships","parameters":{}}\0';
const SENTINEL_REPLY = '{"error":"io.systemd.UserDatabase.BadService","parameters":{}}';

export interface Observed {
  readonly replies: readonly string[];
  readonly end: 'open' | 'closed';
}

/** Sends one raw request on a fresh connection, reads the replies, then tells open from closed. */
export async function exchange(path: string, bytes: Buffer, expectedReplies: number): Promise<Observed> {
  const peer = await RawPeer.connect(path);
  peer.send(bytes);
  const replies: string[] = [];
  for (let i = 0; i < expectedReplies; i++) {
    try {
      replies.push(await peer.next());
    } catch {
      break; // closed early: the comparison reports it
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
