/**
 * The REAL systemd-resolved 252 (Debian's package) inside a World, on the World's private bus:
 * its own /run, its own network namespace (only the links the test makes), a resolved.conf with
 * no upstream DNS and no LLMNR/mDNS (nothing can leave the machine), and its stub 127.0.0.53 in
 * the World. Recipe and quirks: ../shared/lab/README.md, "systemd-resolved 252".
 */
import type { ChildProcess } from 'node:child_process';
import { PrivateBus } from './dbus.js';
import { startBusService } from './machined-lab.js';
import type { World } from './world.js';

export const RESOLVED_BINARY = '/lib/systemd/systemd-resolved';
export const RESOLVED_NAME = 'org.freedesktop.resolve1';

/** resolved.conf for tests: no servers of its own, nothing multicast, the stub on. */
export const RESOLVED_CONF = `[Resolve]
DNS=
FallbackDNS=
Domains=
LLMNR=no
MulticastDNS=no
DNSSEC=no
DNSOverTLS=no
DNSStubListener=yes
ResolveUnicastSingleLabel=no
`;

/** World options that give resolved its configuration (pass to World.create / MachinedLab.start). */
export const RESOLVED_WORLD = {
  files: { '/etc/systemd/resolved.conf': RESOLVED_CONF },
  emptyDirs: ['/etc/systemd/resolved.conf.d'],
};

export class ResolvedInstance {
  private child: ChildProcess | undefined;
  private readonly logs: string[] = [];

  constructor(
    readonly world: World,
    readonly busAddress: string,
  ) {}

  get log(): string {
    return this.logs.join('');
  }

  /** resolved's PID while it runs (nsenter execs it: the PID spawned is resolved's). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts resolved and waits until it owns its bus name. */
  async start(): Promise<void> {
    // resolved creates only the last level of its runtime directory
    await this.world.run('mkdir', ['-p', '/run/systemd'], { mountOnly: true });
    this.child = await startBusService(
      this.world,
      this.busAddress,
      RESOLVED_BINARY,
      RESOLVED_NAME,
      this.logs,
    );
  }

  /** Stops resolved; with `wipe` its saved per-link state goes too (as after a reboot). */
  async stop(opts: { wipe?: boolean } = {}): Promise<void> {
    if (this.child) await this.world.stop(this.child);
    this.child = undefined;
    if (opts.wipe) await this.world.run('rm', ['-rf', '/run/systemd/resolve/netif'], { mountOnly: true });
  }

  async restart(opts: { wipe?: boolean } = {}): Promise<void> {
    await this.stop(opts);
    await this.start();
  }
}

/** A World-level bus plus resolved, when no machined lab is needed. */
export async function startResolved(world: World): Promise<{ bus: PrivateBus; resolved: ResolvedInstance }> {
  const bus = await PrivateBus.start({ world });
  const resolved = new ResolvedInstance(world, bus.address);
  await resolved.start();
  return { bus, resolved };
}
