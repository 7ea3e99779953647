/**
 * The loopback upstream of upstream.ts in a process of its own, for tests whose daemon runs inside a
 * World (its own network namespace: only a process in there can listen where it forwards to).
 *
 *   node dist/test/support/upstream-child.js '{"behaviour":"held","address":"127.0.0.2","port":53}'
 *
 * Prints `{"listening":PORT}`, then `{"query":{…}}` for every query it receives. A line `release` on
 * stdin sends the answers held so far (behaviour `held`); at the end of stdin or on SIGTERM it closes
 * and exits 0.
 */
import { createInterface } from 'node:readline';
import { z } from 'zod';
import { listenUpstream } from './upstream.js';

const Options = z.object({
  behaviour: z.enum(['answer', 'truncate-udp', 'silent', 'wrong-id-first', 'held']),
  address: z.string().optional(),
  port: z.number().int().optional(),
});

async function main(): Promise<void> {
  const options = Options.parse(JSON.parse(process.argv[2] ?? '{}'));
  const upstream = await listenUpstream(options.behaviour, {
    ...(options.address !== undefined ? { address: options.address } : {}),
    ...(options.port !== undefined ? { port: options.port } : {}),
  });
  const report = (): void => {
    void upstream.nextQuery().then((query) => {
      process.stdout.write(`${JSON.stringify({ query })}\n`);
      report();
    });
  };
  report();
  process.stdout.write(`${JSON.stringify({ listening: upstream.port })}\n`);
  let closing = false;
  const close = (): void => {
    if (closing) return;
    closing = true;
    void upstream.close().then(() => process.exit(0));
  };
  createInterface({ input: process.stdin })
    .on('line', (line) => {
      if (line.trim() === 'release') upstream.release();
    })
    .on('close', close);
  process.once('SIGTERM', close);
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
