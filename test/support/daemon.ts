/**
 * `mymachinesd serve` as a process inside a World (the real CLI entry, bin/mymachinesd), with its
 * log lines collected so a test can wait for `ready` and read the real listener addresses.
 */
import { once } from 'node:events';
import { readdir, readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { z } from 'zod';
import { controlMachineSchema, type ControlMachine } from '../../src/daemon/control.js';
import type { World } from './world.js';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/heap.js';

export const BIN = fileURLToPath(new URL('../../../bin/mymachinesd', import.meta.url));

const listOutput = z.object({ machines: z.array(controlMachineSchema), status: z.unknown().optional() });

export class DaemonHandle {
  readonly lines: string[] = [];
  private waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  readonly exited: Promise<number | null>;
  private readonly out: Buffer[] = [];

  private constructor(
    readonly world: World,
    readonly child: ChildProcess,
  ) {
    if (!child.stderr) throw new Error('daemon without stderr');
    createInterface({ input: child.stderr }).on('line', (line) => {
      this.lines.push(line);
      this.waiters = this.waiters.filter((w) => (w.re.test(line) ? (w.resolve(line), false) : true));
    });
    child.stdout?.on('data', (d: Buffer) => this.out.push(d));
    // 'close', not 'exit': every line it wrote has been read by then
    this.exited = once(child, 'close').then(([code]) => code as number | null);
  }

  /**
   * Starts `mymachinesd serve ARGS…` in the World and waits for `ready` (or its exit). `prefix` is a
   * command that execs the daemon in the end (the socket activator, setpriv), keeping its PID.
   */
  static start(
    world: World,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
    opts: { prefix?: readonly string[] } = {},
  ): Promise<DaemonHandle> {
    return DaemonHandle.startCommand(
      world,
      [...(opts.prefix ?? []), process.execPath, ...DAEMON_NODE_FLAGS, BIN, 'serve', ...args],
      env,
    );
  }

  /**
   * Starts any command that logs like the daemon (a wrapper such as `taskset -c 0 node BIN serve …`,
   * or a benchmark's entry point) and waits for `ready` (or its exit).
   */
  static async startCommand(
    world: World,
    command: readonly string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<DaemonHandle> {
    const [cmd, ...args] = command;
    if (cmd === undefined) throw new Error('no command');
    const daemon = await DaemonHandle.launch(world, cmd, args, env);
    await daemon.ready();
    return daemon;
  }

  /**
   * Starts any command line that ends up as the daemon (a socket activator, a notify listener, the
   * installed path) in the World, without waiting: its stderr lines are collected from the start.
   */
  static async launch(
    world: World,
    command: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<DaemonHandle> {
    // Listening from the spawn on: `run` starts CLIs that exit within a few hundred ms, and under
    // load their 'close' came before world.spawn returned (the test then waited for it forever).
    let handle: DaemonHandle | undefined;
    await world.spawn(command, args, {
      env: { ...process.env, ...env },
      onSpawn: (child) => {
        handle = new DaemonHandle(world, child);
      },
    });
    if (!handle) throw new Error(`${command}: not started`);
    return handle;
  }

  /** Starts it and expects it to exit (bad flags, a listener that cannot bind). */
  static async run(
    world: World,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ code: number | null; lines: string[]; stdout: string }> {
    const daemon = await DaemonHandle.launch(world, process.execPath, [BIN, ...args], env);
    return { code: await daemon.exited, lines: daemon.lines, stdout: daemon.stdout };
  }

  /** Waits for the `ready` line; throws with everything it logged if it exits first. */
  async ready(timeoutMs = 30_000): Promise<void> {
    const ready = this.waitFor(/^<6>ready$/, timeoutMs);
    const code = await Promise.race([ready.then(() => undefined), this.exited]);
    if (code !== undefined) throw new Error(`mymachinesd exited with ${code}:\n${this.lines.join('\n')}`);
  }

  /** Everything written to stdout so far. */
  get stdout(): string {
    return Buffer.concat(this.out).toString();
  }

  /** The first line matching `re` from line number `from` on (0: any line so far), or the next one. */
  waitFor(re: RegExp, timeoutMs = 15_000, from = 0): Promise<string> {
    return this.waitForAfter(from, re, timeoutMs);
  }

  /** The real `HOST:PORT` of the first DNS listener of a transport, from its log line. */
  dnsAddress(transport: 'udp' | 'tcp' = 'udp'): { host: string; port: number } {
    for (const line of this.lines) {
      const m = new RegExp(
        `dns: .*${transport}.*?(\\[[^\\]]+\\]|\\d+\\.\\d+\\.\\d+\\.\\d+):(\\d+)`,
        'i',
      ).exec(line);
      if (m?.[1] && m[2]) return { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) };
    }
    throw new Error(`no dns ${transport} listener line:\n${this.lines.join('\n')}`);
  }

  /** The daemon's PID (nsenter execs the command: it is node itself). */
  get pid(): number {
    const pid = this.child.pid;
    if (pid === undefined) throw new Error('daemon has no pid');
    return pid;
  }

  /** Resident set size in KiB (VmRSS of /proc/PID/status). */
  async rssKiB(): Promise<number> {
    const status = await readFile(`/proc/${this.pid}/status`, 'utf8');
    const kib = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
    if (kib === undefined) throw new Error('no VmRSS');
    return Number(kib);
  }

  /** Open file descriptors (entries of /proc/PID/fd). */
  async fdCount(): Promise<number> {
    return (await readdir(`/proc/${this.pid}/fd`)).length;
  }

  /** Log lines from `from` (an index into `lines`) on that match `re`. */
  linesSince(from: number, re: RegExp): string[] {
    return this.lines.slice(from).filter((l) => re.test(l));
  }

  /** Waits for a log line matching `re` that comes after line index `from`. */
  waitForAfter(from: number, re: RegExp, timeoutMs = 15_000): Promise<string> {
    const seen = this.lines.slice(from).find((l) => re.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return this.waitForNew(re, timeoutMs);
  }

  /** Waits for the next new log line matching `re` (lines already seen do not count). */
  waitForNew(re: RegExp, timeoutMs = 15_000): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no new log line ${String(re)}:\n${this.recentLines(40)}`)),
        timeoutMs,
      );
      this.waiters.push({
        re,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
    });
  }

  /**
   * The last `n` log lines for a failure message, without the debug line each Varlink call writes:
   * a test that probes userdb while it waits made those all of the last 40 lines, and the lines
   * that told what the daemon was doing were cut off. How many were left out is said.
   */
  recentLines(n: number): string {
    const perCall = /^<7>\S+: varlink: connection \d+: call /;
    const kept: string[] = [];
    let omitted = 0;
    for (let i = this.lines.length - 1; i >= 0 && kept.length < n; i--) {
      const line = this.lines[i] ?? '';
      if (perCall.test(line)) omitted++;
      else kept.push(line);
    }
    kept.reverse();
    return `${kept.join('\n')}${omitted > 0 ? `\n(${omitted} Varlink call lines left out in between)` : ''}`;
  }

  /** `mymachinesd list --json` run in the World against a control socket: what the daemon serves. */
  async list(control: string): Promise<ControlMachine[]> {
    return (await this.listJson(control)).machines;
  }

  /** The registry's status as `mymachinesd list --json` reports it (bus, machined, address calls). */
  async status(control: string): Promise<unknown> {
    return (await this.listJson(control)).status;
  }

  private async listJson(control: string): Promise<z.infer<typeof listOutput>> {
    const r = await this.world.exec(process.execPath, [BIN, 'list', '--json', '--control', control], {
      timeoutMs: 15_000,
    });
    if (r.code !== 0) throw new Error(`mymachinesd list failed (${r.code}): ${r.stderr}`);
    return listOutput.parse(JSON.parse(r.stdout));
  }

  /** SIGTERM and the exit status. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 15_000): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    // A daemon that does not stop is a failure to report, not a test run that never ends.
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}
