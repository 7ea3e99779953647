/**
 * `mymachinesd serve` as a process inside a World (the real CLI entry, bin/mymachinesd), with its
 * log lines collected so a test can wait for `ready` and read the real listener addresses.
 */
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import type { World } from './world.js';

export const BIN = fileURLToPath(new URL('../../../bin/mymachinesd', import.meta.url));

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

  /** Starts `mymachinesd serve ARGS…` in the World and waits for `ready` (or its exit). */
  static async start(
    world: World,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<DaemonHandle> {
    const daemon = await DaemonHandle.launch(world, process.execPath, [BIN, 'serve', ...args], env);
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
    const child = await world.spawn(command, args, { env: { ...process.env, ...env } });
    return new DaemonHandle(world, child);
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
    const seen = this.lines.slice(from).find((l) => re.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no log line ${String(re)}:\n${this.lines.join('\n')}`)),
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

  /** SIGTERM and the exit status. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}
