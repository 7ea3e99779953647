/**
 * dnsperf as perf-anchors.md ran it, inside a World (loopback of a private network namespace), pinned
 * to one CPU: `taskset -c CPU dnsperf -m udp -s ADDR -p PORT -d FILE -l SECONDS -c 4 -T 1 -q 100`,
 * plus `-Q RATE -v` for latency at a fixed rate (open loop), whose per-query lines give the
 * percentiles.
 */
import type { World } from '../../test/support/world.js';

export interface DnsperfOptions {
  readonly server: string;
  readonly port: number;
  readonly queryFile: string;
  readonly seconds: number;
  /** CPU dnsperf is pinned to. */
  readonly cpu: number;
  readonly clients?: number;
  readonly outstanding?: number;
  /** Open loop at this many queries per second, with per-query latencies. */
  readonly rate?: number;
}

export interface DnsperfRun {
  readonly qps: number;
  readonly sent: number;
  readonly completed: number;
  readonly lost: number;
  readonly rcodes: ReadonlyMap<string, number>;
  readonly avgLatencyMs: number;
  /** Per-query latencies (ms), only with `rate`. */
  readonly latenciesMs: readonly number[];
  readonly command: string;
}

export function dnsperfArgs(o: DnsperfOptions): string[] {
  return [
    '-m', 'udp',
    '-s', o.server,
    '-p', String(o.port),
    '-d', o.queryFile,
    '-l', String(o.seconds),
    '-c', String(o.clients ?? 4),
    '-T', '1',
    '-q', String(o.outstanding ?? 100),
    ...(o.rate === undefined ? [] : ['-Q', String(o.rate), '-v']),
  ]; // prettier-ignore
}

export async function dnsperf(world: World, o: DnsperfOptions): Promise<DnsperfRun> {
  const args = ['-c', String(o.cpu), 'dnsperf', ...dnsperfArgs(o)];
  const r = await world.exec('taskset', args, { timeoutMs: (o.seconds + 60) * 1000 });
  if (r.code !== 0)
    throw new Error(`dnsperf failed (${r.code ?? r.signal}): ${r.stderr}${r.stdout.slice(-2000)}`);
  return parseDnsperf(r.stdout, `taskset ${args.join(' ')}`);
}

function field(text: string, label: string): number {
  const m = new RegExp(`^\\s*${label}:\\s+([0-9.]+)`, 'm').exec(text);
  if (!m?.[1]) throw new Error(`dnsperf output without "${label}":\n${text.slice(-2000)}`);
  return Number(m[1]);
}

export function parseDnsperf(text: string, command: string): DnsperfRun {
  const rcodes = new Map<string, number>();
  const codes = /^\s*Response codes:\s+(.*)$/m.exec(text)?.[1] ?? '';
  for (const m of codes.matchAll(/([A-Z]+) (\d+)/g)) rcodes.set(m[1] ?? '', Number(m[2]));
  const latenciesMs: number[] = [];
  // "> NOERROR m00042.machine AAAA 0.000127": status, name, type, seconds
  for (const m of text.matchAll(/^> \S+ \S+ \S+ ([0-9.]+)$/gm)) latenciesMs.push(Number(m[1]) * 1000);
  return {
    qps: field(text, 'Queries per second'),
    sent: field(text, 'Queries sent'),
    completed: field(text, 'Queries completed'),
    lost: field(text, 'Queries lost'),
    rcodes,
    avgLatencyMs: field(text, 'Average Latency \\(s\\)') * 1000,
    latenciesMs,
    command,
  };
}

/** `NOERROR 89.8 %, NXDOMAIN 10.2 %` */
export function rcodeShares(run: DnsperfRun): string {
  const total = [...run.rcodes.values()].reduce((a, b) => a + b, 0);
  return [...run.rcodes]
    .map(([code, n]) => `${code} ${((100 * n) / Math.max(1, total)).toFixed(1)} %`)
    .join(', ');
}
