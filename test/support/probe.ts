/**
 * Test-side handle of a view probe running inside a World: collects its JSON lines and lets a test
 * wait for the first line (from now on, or already seen) that satisfies a predicate.
 */
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import type { ProbeLine, ProbeMachine } from './view-probe.js';
import type { World } from './world.js';

const PROBE_JS = fileURLToPath(new URL('./view-probe.js', import.meta.url));

export class ProbeHandle {
  readonly lines: ProbeLine[] = [];
  readonly stderr: string[] = [];
  private waiters: { pred: (l: ProbeLine) => boolean; resolve: (l: ProbeLine) => void }[] = [];

  private constructor(
    readonly world: World,
    readonly child: ChildProcess,
  ) {
    if (!child.stdout || !child.stderr) throw new Error('probe without stdio');
    createInterface({ input: child.stdout }).on('line', (text) => {
      const line = JSON.parse(text) as ProbeLine;
      this.lines.push(line);
      this.waiters = this.waiters.filter((w) => (w.pred(line) ? (w.resolve(line), false) : true));
    });
    child.stderr.on('data', (d: Buffer) => this.stderr.push(d.toString()));
  }

  static async start(
    world: World,
    busAddress: string,
    options: Record<string, number> = {},
  ): Promise<ProbeHandle> {
    const child = await world.spawn(process.execPath, [PROBE_JS, busAddress, JSON.stringify(options)]);
    return new ProbeHandle(world, child);
  }

  get last(): ProbeLine | undefined {
    return this.lines[this.lines.length - 1];
  }

  get view(): ProbeMachine[] {
    return this.last?.view ?? [];
  }

  machine(name: string): ProbeMachine | undefined {
    return this.view.find((m) => m.name === name);
  }

  /** The next line satisfying `pred`, or the latest one already received if `includePast`. */
  waitFor(
    pred: (l: ProbeLine) => boolean,
    opts: { timeoutMs?: number; includePast?: boolean } = {},
  ): Promise<ProbeLine> {
    if (opts.includePast) {
      const seen = [...this.lines].reverse().find(pred);
      if (seen) return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(
          new Error(
            `probe: condition not met within ${opts.timeoutMs ?? 15_000} ms; stderr: ${this.stderr.join('').slice(-3000)}`,
          ),
        );
      }, opts.timeoutMs ?? 15_000);
      const done = (l: ProbeLine): void => {
        clearTimeout(timer);
        resolve(l);
      };
      this.waiters.push({ pred, resolve: done });
    });
  }

  /** Waits until the view (at any future or the latest line) satisfies `pred`. */
  waitForView(pred: (view: ProbeMachine[]) => boolean, timeoutMs?: number): Promise<ProbeLine> {
    return this.waitFor((l) => pred(l.view), { includePast: true, ...(timeoutMs ? { timeoutMs } : {}) });
  }

  async stop(): Promise<void> {
    await this.world.stop(this.child);
  }
}
