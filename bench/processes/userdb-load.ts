/**
 * A Varlink load generator for userdb sockets, run as its own process (pinned by the caller), the
 * same for machined and for us. Calls are sent as given (pre-encoded JSON, NUL-terminated) and
 * replies are read by NUL framing only: no parsing on the measured path.
 *
 *   node userdb-load.js '{"socket":PATH,"calls":[JSON…],"mode":"connection"|"pipelined",
 *                         "count":N,"concurrency":C,"depth":D}'
 *
 * - `connection`: as nss-systemd does (reference §4.7), one connection per lookup: connect, send
 *   the call, read the reply, close. C such loops run at once. Latency: connect to reply.
 * - `pipelined`: C persistent connections, each keeping D calls in flight (D = 1: one call after
 *   the other on one connection). Latency: call written to its reply read.
 *
 * `warmup` lookups are made first, the same way, and not counted.
 *
 * Prints one JSON object (`LoadResult`, ../harness/userdb-load.ts).
 */
import net from 'node:net';
import type { z } from 'zod';
import { LoadOptions } from '../harness/userdb-load.js';

type Options = z.output<typeof LoadOptions>;

interface Tally {
  completed: number;
  errors: number;
  elapsedMs: number;
  latenciesUs: number[];
  replies: Record<string, string>;
}

const now = (): number => Number(process.hrtime.bigint()) / 1000;

/** Splits NUL-terminated messages out of a stream. */
class NulReader {
  private pending: Buffer[] = [];

  /** Feeds a chunk; returns the complete messages it finished. */
  push(chunk: Buffer): string[] {
    const out: string[] = [];
    let start = 0;
    for (let nul = chunk.indexOf(0); nul !== -1; nul = chunk.indexOf(0, start)) {
      this.pending.push(chunk.subarray(start, nul));
      out.push(Buffer.concat(this.pending).toString('utf8'));
      this.pending = [];
      start = nul + 1;
    }
    if (start < chunk.length) this.pending.push(chunk.subarray(start));
    return out;
  }
}

async function connectionMode(o: Options, result: Tally): Promise<void> {
  const frames = o.calls.map((c) => Buffer.from(`${c}\0`));
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < o.count) {
      const i = next++;
      const call = o.calls[i % o.calls.length] ?? '';
      const frame = frames[i % frames.length] ?? Buffer.alloc(0);
      const t0 = now();
      const reply = await new Promise<string | undefined>((resolve) => {
        const socket = net.createConnection(o.socket);
        const reader = new NulReader();
        socket.once('connect', () => socket.write(frame));
        socket.on('data', (chunk: Buffer) => {
          const [first] = reader.push(chunk);
          if (first === undefined) return;
          socket.destroy();
          resolve(first);
        });
        socket.once('error', () => resolve(undefined));
        socket.once('close', () => resolve(undefined));
      });
      if (reply === undefined) {
        result.errors++;
        continue;
      }
      result.latenciesUs.push(now() - t0);
      result.completed++;
      result.replies[call] ??= reply;
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
}

async function pipelinedMode(o: Options, result: Tally): Promise<void> {
  const frames = o.calls.map((c) => Buffer.from(`${c}\0`));
  let next = 0;
  const connection = (): Promise<void> =>
    new Promise((resolve) => {
      const socket = net.createConnection(o.socket);
      const reader = new NulReader();
      const inFlight: { call: number; t0: number }[] = [];
      const send = (): void => {
        if (next >= o.count) return;
        const i = next++;
        inFlight.push({ call: i % frames.length, t0: now() });
        socket.write(frames[i % frames.length] ?? Buffer.alloc(0));
      };
      socket.once('connect', () => {
        for (let d = 0; d < o.depth; d++) send();
      });
      socket.on('data', (chunk: Buffer) => {
        for (const reply of reader.push(chunk)) {
          const done = inFlight.shift();
          if (!done) continue;
          result.latenciesUs.push(now() - done.t0);
          result.completed++;
          result.replies[o.calls[done.call] ?? ''] ??= reply;
          send();
        }
        if (inFlight.length === 0) socket.end();
      });
      socket.once('error', () => {
        result.errors += inFlight.length;
        resolve();
      });
      socket.once('close', () => {
        result.errors += inFlight.length;
        inFlight.length = 0;
        resolve();
      });
    });
  await Promise.all(Array.from({ length: o.concurrency }, connection));
}

async function main(): Promise<void> {
  const o = LoadOptions.parse(JSON.parse(process.argv[2] ?? '{}'));
  const run = (options: Options, tally: Tally): Promise<void> =>
    options.mode === 'connection' ? connectionMode(options, tally) : pipelinedMode(options, tally);
  if (o.warmup > 0)
    await run(
      { ...o, count: o.warmup },
      { completed: 0, errors: 0, elapsedMs: 0, latenciesUs: [], replies: {} },
    );
  const result: Tally = { completed: 0, errors: 0, elapsedMs: 0, latenciesUs: [], replies: {} };
  const t0 = now();
  await run(o, result);
  result.elapsedMs = (now() - t0) / 1000;
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`userdb-load: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
