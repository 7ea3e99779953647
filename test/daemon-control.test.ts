/**
 * The control interface's List (src/daemon/control-service.ts) on its own: thousands of machines are
 * serialized a slice per event-loop turn, and the reply is the same JSON as one JSON.stringify.
 * The whole path through the daemon and `mymachinesd list --json`: test/daemon-cli.test.ts.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate } from 'node:timers/promises';
import { CONTROL_INTERFACE, LIST_SLICE, controlInterface } from '../src/daemon/control-service.js';
import { controlMachine } from '../src/daemon/control.js';
import type { RegistryStatus } from '../src/registry-client/sync.js';
import { MachineTable } from '../src/registry-client/registry.js';
import type { MachineRecord } from '../src/registry-client/view.js';
import { isStream, type MethodResult } from '../src/varlink/interface.js';
import {
  EncodedParameters,
  encodeReply,
  encodedReplyParts,
  type VarlinkReply,
} from '../src/varlink/protocol.js';
import { createLogger } from '../src/log.js';
import { VarlinkServer } from '../src/varlink/server.js';
import { BIN } from './support/daemon.js';
import { machineRecord } from './support/records.js';

const STATUS: RegistryStatus = {
  busConnected: true,
  machinedOwner: ':1.7',
  lastSyncAt: 1,
  lastSyncMs: 2,
  machines: 0,
  lastError: undefined,
  refreshRoundMs: 10_000,
  addressCalls: 3,
  addressesKept: 4,
};

const problem = (m: MachineRecord): string | undefined => (m.name.endsWith('7') ? 'no maps' : undefined);

function table(n: number): MachineTable {
  const t = new MachineTable();
  t.upsert(machineRecord({ name: '.host', class: 'host' }));
  for (let i = 1; i <= n; i++)
    t.upsert(
      machineRecord({
        name: `m${i}`,
        netif: [i + 10],
        addresses: [`10.0.${i >> 8}.${i & 255}`, `fd42::${i.toString(16)}`, 'fe80::1'],
        uidMap: [{ inner: 0, outer: 65536 * (i + 1), count: 65536 }],
      }),
    );
  return t;
}

/** Invokes List on a control interface over `view`, as the Varlink server would. */
function invokeList(
  view: MachineTable,
  more: boolean,
  replyMax?: number,
): MethodResult | Promise<MethodResult> {
  const iface = controlInterface({
    view,
    status: () => STATUS,
    domain: 'machine',
    userdbProblem: problem,
    ...(replyMax === undefined ? {} : { replyMax }),
  });
  const invocation = iface.methods[`${CONTROL_INTERFACE}.List`]?.invoke(
    [],
    {},
    {
      method: `${CONTROL_INTERFACE}.List`,
      more,
    },
  );
  if (invocation?.kind !== 'result') throw new Error('List was not invoked');
  return invocation.result;
}

/** Calls List and counts the event-loop turns that pass before its reply is there. */
async function callList(
  view: MachineTable,
  replyMax?: number,
): Promise<{ reply: VarlinkReply; turns: number }> {
  const pending = invokeList(view, false, replyMax);
  let result: MethodResult | undefined;
  let turns = 0;
  void Promise.resolve(pending).then((r) => (result = r));
  await Promise.resolve(); // a reply that is there at once
  while (result === undefined) {
    await setImmediate();
    turns++;
  }
  if (isStream(result)) throw new Error('a stream');
  return { reply: result, turns };
}

test('List of thousands of machines is serialized a slice per event-loop turn, not in one go', async (t) => {
  const n = 2_000;
  const { turns } = await callList(table(n));
  // one turn between two slices: the event loop (DNS, userdb) runs in between
  t.true(turns >= n / LIST_SLICE - 1, `${turns} turns for ${n} machines`);
  // a few machines: no turn given away
  t.is((await callList(table(LIST_SLICE))).turns, 0);
});

test('List gives the same JSON as serializing every machine and the status at once, hosts left out', async (t) => {
  for (const n of [0, 1, LIST_SLICE, LIST_SLICE + 1, 3 * LIST_SLICE + 7]) {
    const view = table(n);
    const { reply } = await callList(view);
    t.true(reply.parameters instanceof EncodedParameters, String(n));
    const expected = {
      machines: view
        .all()
        .filter((m) => m.class !== 'host')
        .map((m) => controlMachine(m, problem)),
      status: { ...STATUS, machinedOwner: ':1.7', lastError: null },
    };
    t.is(encodeReply(reply, false), JSON.stringify({ parameters: expected }), `${n} machines`);
  }
});

test('List answers with the machines as they were when it was called, whatever changes while it is built', async (t) => {
  const view = table(5 * LIST_SLICE);
  const pending = invokeList(view, false);
  // while the first slices are serialized: the last machine goes, another changes, a new one comes
  await setImmediate();
  view.remove(`m${5 * LIST_SLICE}`);
  view.upsert(machineRecord({ name: 'm3', addresses: ['192.0.2.3'] }));
  view.upsert(machineRecord({ name: 'late' }));
  const result = await pending;
  if (isStream(result) || !(result.parameters instanceof EncodedParameters)) throw new Error('not encoded');
  const parsed = JSON.parse(result.parameters.text()) as {
    machines: { name: string; addresses: { address: string }[] }[];
  };
  t.is(parsed.machines.length, 5 * LIST_SLICE);
  t.is(parsed.machines.at(-1)?.name, `m${5 * LIST_SLICE}`);
  t.false(parsed.machines.some((m) => m.name === 'late'));
  t.deepEqual(
    parsed.machines.find((m) => m.name === 'm3')?.addresses.map((a) => a.address),
    ['10.0.0.3', 'fd42::3', 'fe80::1'],
  );
});

test('encoded parameters go out as they are, in their pieces, with and without continues', (t) => {
  const encoded = new EncodedParameters([Buffer.from('{"a":[1,'), Buffer.from('2],"b":"ü"}')]);
  t.is(encodeReply({ parameters: encoded }, false), '{"parameters":{"a":[1,2],"b":"ü"}}');
  t.is(encodeReply({ parameters: encoded }, true), '{"parameters":{"a":[1,2],"b":"ü"},"continues":true}');
  const wire = (continues: boolean): string =>
    Buffer.concat(
      encodedReplyParts(encoded, continues).map((p) => (typeof p === 'string' ? Buffer.from(p) : p)),
    ).toString();
  t.is(wire(false), '{"parameters":{"a":[1,2],"b":"ü"}}\0');
  t.is(wire(true), '{"parameters":{"a":[1,2],"b":"ü"},"continues":true}\0');
});

test('List over the size a reply may have answers TooManyMachines, naming the size', async (t) => {
  const { reply } = await callList(table(3 * LIST_SLICE), 10_000);
  t.true('error' in reply);
  if (!('error' in reply)) return;
  t.is(reply.error, `${CONTROL_INTERFACE}.TooManyMachines`);
  t.like(reply.parameters, { machines: 3 * LIST_SLICE });
  t.true(Number(reply.parameters['bytes']) > 10_000);
});

test('List with more: slices of at most LIST_SLICE machines, the status in the last reply only, together the one reply', async (t) => {
  for (const n of [0, 1, LIST_SLICE, 2 * LIST_SLICE + 3]) {
    const view = table(n);
    const result = await invokeList(view, true);
    if (!isStream(result)) throw new Error('not a stream');
    const replies = [...(result.stream as Iterable<{ machines: unknown[]; status?: unknown }>)];
    t.is(replies.length, Math.max(1, Math.ceil(n / LIST_SLICE)), `${n} machines`);
    t.true(replies.every((r) => r.machines.length <= LIST_SLICE));
    t.true(replies.slice(0, -1).every((r) => !('status' in r)));
    const { reply } = await callList(view);
    if (!(reply.parameters instanceof EncodedParameters)) throw new Error('not encoded');
    t.is(
      JSON.stringify({ machines: replies.flatMap((r) => r.machines), status: replies.at(-1)?.status }),
      reply.parameters.text(),
      `${n} machines`,
    );
  }
});

test('mymachinesd list asks with more: hundreds of machines come in slices, put together as one list', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mmd-control-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const view = table(2 * LIST_SLICE + 50);
  const server = new VarlinkServer({ logger: createLogger('error') });
  // a reply limit no single List reply of these machines fits: only the slices get through
  server.addInterface(
    controlInterface({
      view,
      status: () => STATUS,
      domain: 'machine',
      userdbProblem: problem,
      replyMax: 20_000,
    }),
  );
  const path = join(dir, 'control');
  await server.listen(path);
  t.teardown(() => server.close());
  const run = (...args: string[]): Promise<{ code: number | null; stdout: string }> =>
    new Promise((resolve) => {
      execFile(BIN, args, { maxBuffer: 64 << 20 }, (error, stdout) => {
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout });
      });
    });
  const json = await run('list', '--json', '--control', path);
  t.is(json.code, 0);
  const parsed = JSON.parse(json.stdout) as {
    machines: { name: string }[];
    status: { addressCalls: number };
  };
  t.is(parsed.machines.length, 2 * LIST_SLICE + 50);
  t.is(parsed.machines[0]?.name, 'm1');
  t.is(parsed.machines.at(-1)?.name, `m${2 * LIST_SLICE + 50}`);
  t.is(parsed.status.addressCalls, STATUS.addressCalls);
  const text = await run('list', '--control', path);
  t.is(text.code, 0);
  t.regex(text.stdout, new RegExp(`^${2 * LIST_SLICE + 50} machine\\(s\\)\\.$`, 'm'));
});
