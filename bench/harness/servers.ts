/**
 * The DNS servers the benchmarks load, each started inside a World (private network namespace, so
 * loopback only) and pinned with `taskset -c CPU` from its first instruction, all threads included:
 *
 * - ours: `mymachinesd serve` (the real CLI), or the bench-only entry of `bench:scale`;
 * - dnsmasq, configured exactly as in perf-anchors.md (hosts file, `--local=/machine/`);
 * - the Node ceiling: `bench/resolver-stub.ts null`, a dgram server that returns each query with QR
 *   set (no DNS work), with the same literal-address `lookup` the stub uses.
 *
 * Every process is started by us and stopped by its PID (World.stop / dispose).
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BIN, DaemonHandle } from '../../test/support/daemon.js';
import type { World } from '../../test/support/world.js';
import { REPO } from './machine.js';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/heap.js';

export interface DnsUnderTest {
  readonly label: string;
  readonly pid: number;
  readonly address: string;
  readonly port: number;
  stop(): Promise<void>;
}

export const NODE_CEILING_JS = join(REPO, 'dist/bench/resolver-stub.js');

/** Starts a daemon-like command (logs `ready` and its listeners) pinned to `cpu`, or not pinned (undefined). */
export async function startDaemon(
  world: World,
  label: string,
  command: readonly string[],
  cpu: number | undefined,
): Promise<DnsUnderTest & { readonly handle: DaemonHandle }> {
  const handle = await DaemonHandle.startCommand(
    world,
    cpu === undefined ? command : ['taskset', '-c', String(cpu), ...command],
  );
  const pid = handle.child.pid;
  if (pid === undefined) throw new Error(`${label}: no pid`);
  const { host, port } = handle.dnsAddress('udp');
  return {
    label,
    pid,
    address: host,
    port,
    handle,
    stop: async () => {
      await handle.stop();
    },
  };
}

/** `mymachinesd serve` (bin/mymachinesd) on 127.0.0.1, any free port. */
export function startMymachinesd(
  world: World,
  busAddress: string,
  cpu: number,
  extra: readonly string[] = [],
): Promise<DnsUnderTest & { readonly handle: DaemonHandle }> {
  return startDaemon(
    world,
    'mymachinesd',
    [
      process.execPath,
      ...DAEMON_NODE_FLAGS,
      BIN,
      'serve',
      '--bus',
      busAddress,
      '--dns',
      '127.0.0.1:0',
      ...extra,
    ],
    cpu,
  );
}

async function firstLine(
  child: ChildProcess,
  stream: 'stdout' | 'stderr',
  re: RegExp,
  what: string,
): Promise<string> {
  const input = child[stream];
  if (!input) throw new Error(`${what}: no ${stream}`);
  const lines = createInterface({ input });
  const seen: string[] = [];
  const found = new Promise<string>((resolve) => {
    lines.on('line', (line) => {
      seen.push(line);
      if (re.test(line)) resolve(line);
    });
  });
  const exited = once(child, 'exit').then(([code]) => {
    throw new Error(`${what} exited (${String(code)}): ${seen.join('\n')}`);
  });
  const timeout = new Promise<never>((_, reject) =>
    setTimeout(
      () => reject(new Error(`${what}: no line ${String(re)} in 15 s: ${seen.join('\n')}`)),
      15_000,
    ).unref(),
  );
  try {
    return await Promise.race([found, exited, timeout]);
  } finally {
    // keep draining so the child never blocks on a full pipe
    input.resume();
  }
}

/** dnsmasq as in perf-anchors.md, serving `hostsFile` on 127.0.0.1:5300. */
export async function startDnsmasq(world: World, hostsFile: string, cpu: number): Promise<DnsUnderTest> {
  const port = 5300;
  const child = await world.spawn('taskset', [
    '-c', String(cpu),
    'dnsmasq', '-k', '-C', '/dev/null', '--no-resolv', '--no-hosts', `--addn-hosts=${hostsFile}`,
    `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces', '--local=/machine/',
    '--domain-needed', `--pid-file=${join(world.dir, 'dnsmasq.pid')}`, '--user=root', '--log-facility=-',
  ]); // prettier-ignore
  if (child.pid === undefined) throw new Error('dnsmasq did not start');
  // "read FILE - N names": the hosts file is loaded, after the sockets are bound
  await firstLine(child, 'stderr', /read .* names/, 'dnsmasq');
  return { label: 'dnsmasq', pid: child.pid, address: '127.0.0.1', port, stop: () => world.stop(child) };
}

/** The Node ceiling (bench/resolver-stub.ts `null`) on 127.0.0.1, any free port. */
export async function startNodeCeiling(world: World, cpu: number): Promise<DnsUnderTest> {
  const child = await world.spawn('taskset', [
    '-c',
    String(cpu),
    process.execPath,
    NODE_CEILING_JS,
    '0',
    'null',
  ]);
  if (child.pid === undefined) throw new Error('node ceiling did not start');
  const line = await firstLine(child, 'stdout', /^null \d+$/, 'node ceiling');
  return {
    label: 'Node ceiling',
    pid: child.pid,
    address: '127.0.0.1',
    port: Number(line.split(' ')[1]),
    stop: () => world.stop(child),
  };
}
