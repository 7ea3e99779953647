/**
 * Measuring on a shared VM. Other sessions may run builds and test suites on this machine while a
 * benchmark runs (seen: two of them, taking up to 1.5 of the 2 vCPUs). Each measured run therefore
 * (1) waits, up to a bound, until processes other than ours have been quiet for a moment, (2) runs,
 * and (3) is repeated, up to a bound, when others took more than a quarter of a core meanwhile. The
 * CPU others took during the kept run is reported with it, so a reader can tell a clean run from a
 * contended one.
 */
import { foreignCpu } from './processes.js';

export interface QuietOptions {
  /** Share of one core others may use while we wait to start (default 10 %). */
  readonly startBelow?: number;
  /** Share of one core others may use during the run before it is repeated (default 25 %). */
  readonly keepBelow?: number;
  readonly maxWaitMs?: number;
  readonly maxAttempts?: number;
}

export interface QuietResult<T> {
  readonly result: T;
  /** CPU others took during the kept run, as a share of one core (0.5 = half a core). */
  readonly foreignShare: number;
  readonly attempts: number;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until others have used less than `below` of a core over one second (bounded). */
export async function untilQuiet(below = 0.1, maxWaitMs = 120_000): Promise<void> {
  const deadline = Date.now() + maxWaitMs;
  while (Date.now() < deadline) {
    const others = foreignCpu();
    await sleep(1000);
    if (others() / 1000 < below) return;
  }
}

export async function quietRun<T>(work: () => Promise<T>, o: QuietOptions = {}): Promise<QuietResult<T>> {
  const maxAttempts = o.maxAttempts ?? 3;
  let last: QuietResult<T> | undefined;
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    await untilQuiet(o.startBelow ?? 0.1, o.maxWaitMs ?? 120_000);
    const others = foreignCpu();
    const t0 = performance.now();
    const result = await work();
    const share = others() / Math.max(1, performance.now() - t0);
    last = { result, foreignShare: share, attempts: attempt };
    if (share <= (o.keepBelow ?? 0.25)) return last;
  }
  if (!last) throw new Error('quietRun: no attempt');
  return last;
}

/** `12 %` of one core. */
export function share(value: number): string {
  return `${Math.round(value * 100)} %`;
}
