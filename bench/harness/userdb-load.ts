/**
 * Runs the userdb load generator (../processes/userdb-load.ts) as its own process inside a World,
 * pinned to one CPU, and reads its result.
 */
import { join } from 'node:path';
import { z } from 'zod';
import type { World } from '../../test/support/world.js';
import { REPO } from './machine.js';

export const LoadOptions = z.object({
  socket: z.string(),
  calls: z.array(z.string()).min(1),
  mode: z.enum(['connection', 'pipelined']),
  count: z.number().int().positive(),
  concurrency: z.number().int().positive().default(1),
  depth: z.number().int().positive().default(1),
  /** Lookups made the same way before the timed ones, not counted (JIT and caches warm up). */
  warmup: z.number().int().nonnegative().default(0),
});
export type LoadOptions = z.input<typeof LoadOptions>;

export const LoadResult = z.object({
  completed: z.number(),
  errors: z.number(),
  elapsedMs: z.number(),
  latenciesUs: z.array(z.number()),
  /** The first reply to each distinct call (sanity checks compare them across servers). */
  replies: z.record(z.string(), z.string()),
});
export type LoadResult = z.infer<typeof LoadResult>;

const LOAD_JS = join(REPO, 'dist/bench/processes/userdb-load.js');

export async function userdbLoad(world: World, cpu: number, options: LoadOptions): Promise<LoadResult> {
  const r = await world.exec(
    'taskset',
    ['-c', String(cpu), process.execPath, LOAD_JS, JSON.stringify(options)],
    {
      timeoutMs: 300_000,
    },
  );
  if (r.code !== 0)
    throw new Error(`userdb load on ${options.socket} failed (${r.code ?? r.signal}): ${r.stderr}`);
  return LoadResult.parse(JSON.parse(r.stdout));
}

/** Lookups per second of a run. */
export function throughput(r: LoadResult): number {
  return (r.completed * 1000) / r.elapsedMs;
}
