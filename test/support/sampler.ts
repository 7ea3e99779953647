/**
 * Probes repeated while a fault lasts: every probe runs over and over, `everyMs` apart, and each
 * outcome is kept with its latency. The fixed period is sampling (a measurement), not a wait for a
 * condition; waits for conditions use events (log lines, bus signals).
 */

export interface ProbeOutcome {
  readonly ms: number;
  readonly ok: boolean;
  /** What was wrong, for the assertion message (empty when ok). */
  readonly detail: string;
}

export interface Probe {
  readonly name: string;
  run(): Promise<ProbeOutcome>;
}

export interface ProbeStats {
  readonly name: string;
  readonly count: number;
  readonly failures: readonly string[];
  readonly maxMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

export class Sampler {
  private stopped = false;
  private readonly outcomes = new Map<string, ProbeOutcome[]>();
  private readonly loops: Promise<void>[];
  /** Outcomes recorded by the probe that has recorded the fewest. */
  private rounds = 0;
  private waiters: { rounds: number; resolve: () => void }[] = [];

  private constructor(
    probes: readonly Probe[],
    private readonly everyMs: number,
  ) {
    for (const p of probes) this.outcomes.set(p.name, []);
    this.loops = probes.map((p) => this.loop(p));
  }

  static start(probes: readonly Probe[], everyMs = 20): Sampler {
    return new Sampler(probes, everyMs);
  }

  /** Resolves once every probe has run `n` more times. */
  more(n: number): Promise<void> {
    const rounds = this.rounds + n;
    return new Promise((resolve) => this.waiters.push({ rounds, resolve }));
  }

  async stop(): Promise<ProbeStats[]> {
    this.stopped = true;
    await Promise.all(this.loops);
    return [...this.outcomes].map(([name, list]) => {
      const sorted = list.map((o) => o.ms).sort((a, b) => a - b);
      const at = (p: number): number =>
        sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? 0;
      return {
        name,
        count: list.length,
        failures: list.filter((o) => !o.ok).map((o) => o.detail),
        maxMs: sorted.at(-1) ?? 0,
        p50Ms: at(50),
        p99Ms: at(99),
      };
    });
  }

  private async loop(probe: Probe): Promise<void> {
    const list = this.outcomes.get(probe.name) ?? [];
    while (!this.stopped) {
      let outcome: ProbeOutcome;
      try {
        outcome = await probe.run();
      } catch (err) {
        outcome = {
          ms: Number.POSITIVE_INFINITY,
          ok: false,
          detail: err instanceof Error ? err.message : String(err),
        };
      }
      list.push(outcome);
      this.rounds = Math.min(...[...this.outcomes.values()].map((l) => l.length));
      this.waiters = this.waiters.filter((w) => (this.rounds >= w.rounds ? (w.resolve(), false) : true));
      if (!this.stopped) await new Promise((resolve) => setTimeout(resolve, this.everyMs));
    }
  }
}

/** One line per probe: count, p50/p99/max latency and failures, for t.log and the docs. */
export function describeStats(stats: readonly ProbeStats[]): string {
  return stats
    .map(
      (s) =>
        `${s.name}: ${s.count} replies, p50 ${s.p50Ms.toFixed(2)} ms, p99 ${s.p99Ms.toFixed(2)} ms, max ${s.maxMs.toFixed(2)} ms, ${s.failures.length} wrong`,
    )
    .join('; ');
}
