/**
 * A private `dbus-daemon` of type "system" for one test run: its socket lives in a temp directory,
 * it never activates anything (no service directories, so a call to an absent name fails at once
 * with ServiceUnknown) and its policy allows everything. Started on the host or inside a World.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { World } from './world.js';

/** `extraPolicy`: more <policy> elements (e.g. a group rule, which makes the bus resolve groups). */
export function busConfig(socketPath: string, extraPolicy = ''): string {
  return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=${socketPath}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
${extraPolicy}
</busconfig>
`;
}

export class PrivateBus {
  private child: ChildProcess | undefined;

  private constructor(
    readonly dir: string,
    private readonly ownsDir: boolean,
    private readonly world: World | undefined,
  ) {}

  /** The socket path (visible on the host also for a bus inside a World: it lives in a host temp dir). */
  get socketPath(): string {
    return join(this.dir, 'system_bus_socket');
  }

  get address(): string {
    return `unix:path=${this.socketPath}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  static async start(opts: { world?: World; dir?: string; extraPolicy?: string } = {}): Promise<PrivateBus> {
    const ownsDir = opts.dir === undefined && opts.world === undefined;
    const dir = opts.dir ?? opts.world?.dir ?? (await mkdtemp(join(tmpdir(), 'mmd-bus-')));
    const bus = new PrivateBus(dir, ownsDir, opts.world);
    await writeFile(join(dir, 'bus.conf'), busConfig(bus.socketPath, opts.extraPolicy));
    await bus.restart();
    return bus;
  }

  /** (Re)starts the daemon on the same socket path. */
  async restart(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null)
      throw new Error('bus is running');
    await rm(this.socketPath, { force: true });
    const args = [
      `--config-file=${join(this.dir, 'bus.conf')}`,
      '--nofork',
      '--nopidfile',
      '--nosyslog',
      '--print-address',
    ];
    const child = this.world
      ? await this.world.spawn('dbus-daemon', args)
      : spawn('dbus-daemon', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    if (!child.stdout) throw new Error('dbus-daemon has no stdout');
    // --print-address prints once the socket is listening: an event, not a poll.
    const lines = createInterface({ input: child.stdout });
    await Promise.race([
      once(lines, 'line'),
      once(child, 'exit').then(([code]) => {
        throw new Error(`dbus-daemon exited with ${String(code)}`);
      }),
    ]);
    lines.close();
    child.stdout.resume();
    child.stderr?.resume();
    if (this.world) {
      // clients inside the world that ignore DBUS_SYSTEM_BUS_ADDRESS find it at the standard path
      await this.world.run('ln', ['-sf', this.socketPath, '/run/dbus/system_bus_socket'], {
        mountOnly: true,
      });
    }
    await access(this.socketPath);
  }

  /** Stops the daemon (SIGTERM, or SIGKILL for a crash); every client connection drops. */
  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    await exited;
  }

  async stop(): Promise<void> {
    await this.kill();
    if (this.ownsDir) await rm(this.dir, { recursive: true, force: true });
  }
}
