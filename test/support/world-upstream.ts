/**
 * An upstream DNS server inside a World (upstream-child.ts in a process of its own), for a daemon
 * that forwards there: it answers every A question with 203.0.113.1, or holds the answers until the
 * test releases them. It listens on a loopback address of the World only, so no query the daemon
 * forwards can leave the machine.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { World } from './world.js';

const CHILD = fileURLToPath(new URL('./upstream-child.js', import.meta.url));

/** What the upstream answers for every A question. */
export const UPSTREAM_ANSWER = '203.0.113.1';

const Line = z.union([
  z.object({ listening: z.number() }),
  z.object({ query: z.object({ transport: z.string(), name: z.string() }).loose() }),
]);

export interface SeenByUpstream {
  readonly transport: string;
  readonly name: string;
}

export class WorldUpstream {
  readonly queries: SeenByUpstream[] = [];
  private waiters: { name: string; resolve: (q: SeenByUpstream) => void }[] = [];

  private constructor(private readonly child: ChildProcess) {}

  static async start(
    world: World,
    behaviour: 'answer' | 'held',
    address: string,
    port = 53,
  ): Promise<WorldUpstream> {
    const child = await world.spawn(process.execPath, [CHILD, JSON.stringify({ behaviour, address, port })], {
      stdin: 'pipe',
    });
    const stdout = child.stdout;
    if (!stdout) throw new Error('upstream without stdout');
    const upstream = new WorldUpstream(child);
    const listening = new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`upstream exited (${code}) before listening`)));
      createInterface({ input: stdout }).on('line', (text) => {
        const line = Line.parse(JSON.parse(text));
        if ('listening' in line) {
          resolve();
          return;
        }
        upstream.queries.push(line.query);
        upstream.waiters = upstream.waiters.filter((w) =>
          w.name === line.query.name ? (w.resolve(line.query), false) : true,
        );
      });
    });
    await listening;
    return upstream;
  }

  /** Resolves when a query for `name` has arrived (at once if one already has). */
  waitForQuery(name: string): Promise<SeenByUpstream> {
    const seen = this.queries.find((q) => q.name === name);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ name, resolve }));
  }

  /** Sends the answers held so far. */
  release(): void {
    this.child.stdin?.write('release\n');
  }

  /** Ends its stdin, and waits for it to close and exit (the World kills it if the test dies). */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.stdin?.end();
    await exited;
  }
}
