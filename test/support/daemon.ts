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

  private constructor(
    readonly world: World,
    readonly child: ChildProcess,
  ) {
    if (!child.stderr) throw new Error('daemon without stderr');
    createInterface({ input: child.stderr }).on('line', (line) => {
      this.lines.push(line);
      this.waiters = this.waiters.filter((w) => (w.re.test(line) ? (w.resolve(line), false) : true));
    });
    child.stdout?.resume();
    this.exited = once(child, 'exit').then(([code]) => code as number | null);
  }

  /** Starts `mymachinesd serve ARGS…` in the World and waits for `ready` (or its exit). */
  static start(world: World, args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<DaemonHandle> {
    return DaemonHandle.startCommand(world, [process.execPath, BIN, 'serve', ...args], env);
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
    const child = await world.spawn(cmd, args, { env: { ...process.env, ...env } });
    const daemon = new DaemonHandle(world, child);
    const ready = daemon.waitFor(/^<6>ready$/, 30_000);
    const code = await Promise.race([ready.then(() => undefined), daemon.exited]);
    if (code !== undefined) throw new Error(`mymachinesd exited with ${code}:\n${daemon.lines.join('\n')}`);
    return daemon;
  }

  /** Starts it and expects it to exit (bad flags, a listener that cannot bind). */
  static async run(
    world: World,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ code: number | null; lines: string[] }> {
    const child = await world.spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
    const daemon = new DaemonHandle(world, child);
    return { code: await daemon.exited, lines: daemon.lines };
  }

  waitFor(re: RegExp, timeoutMs = 15_000): Promise<string> {
    const seen = this.lines.find((l) => re.test(l));
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
