/**
 * Test-side control of a FakeMachined process (TEST DOUBLE of machined) on a private bus on the
 * host. Only unix sockets in a temp directory are used: no namespaces needed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BusConnection } from '../../src/registry-client/bus.js';
import { Machine1Client } from '../../src/registry-client/machine1.js';
import { parseAddress } from '../../src/registry-client/address.js';
import { PrivateBus } from './dbus.js';
import type { FakeMachine, FakeStartOptions } from './fake-machined.js';

const FAKE_JS = fileURLToPath(new URL('./fake-machined.js', import.meta.url));
const TEST_IFACE = 'org.mymachinesd.Test.FakeMachined';

export class FakeMachinedHandle {
  private child: ChildProcess | undefined;
  private conn: BusConnection | undefined;

  private constructor(readonly bus: PrivateBus) {}

  /**
   * On its own private bus, or on `bus` (which the caller stops). When the double does not start,
   * nothing is left running: the double is killed if it still runs, and a bus of its own stopped
   * (a failed start left its dbus-daemon behind, which nobody held a handle to).
   */
  static async start(opts: { running?: boolean; bus?: PrivateBus } = {}): Promise<FakeMachinedHandle> {
    const bus = opts.bus ?? (await PrivateBus.start());
    const fake = new FakeMachinedHandle(bus);
    try {
      if (opts.running ?? true) await fake.startMachined();
    } catch (err) {
      await fake.killMachined();
      if (opts.bus === undefined) await bus.stop();
      throw err;
    }
    return fake;
  }

  get busAddress(): string {
    return this.bus.address;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /**
   * Starts the double; it reloads the machines of its previous run and re-announces them. `from`:
   * stalls and watched members in force from its first call (a registry resyncs at once).
   */
  async startMachined(from?: FakeStartOptions): Promise<void> {
    const child = spawn(
      process.execPath,
      [FAKE_JS, this.bus.address, join(this.bus.dir, 'fake-state.json')],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: from ? { ...process.env, FAKE_MACHINED_START: JSON.stringify(from) } : process.env,
      },
    );
    this.child = child;
    if (!child.stdout) throw new Error('no stdout');
    const lines = createInterface({ input: child.stdout });
    const [first] = (await Promise.race([once(lines, 'line'), once(child, 'exit')])) as [unknown];
    if (first !== 'ready') throw new Error(`fake machined did not start: ${String(first)}`);
  }

  async killMachined(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    await exited;
  }

  private async connection(): Promise<BusConnection> {
    if (!this.conn || this.conn.closed) this.conn = await BusConnection.open(this.bus.address);
    return this.conn;
  }

  async machine1(): Promise<Machine1Client> {
    return new Machine1Client(await this.connection());
  }

  async register(
    name: string,
    opts: { leader?: number; class?: 'container' | 'vm'; netif?: number[] } = {},
  ): Promise<void> {
    const m1 = await this.machine1();
    await m1.registerMachineWithNetwork(
      name,
      Buffer.alloc(0),
      'test',
      opts.class ?? 'container',
      opts.leader ?? process.pid,
      '',
      opts.netif ?? [],
    );
  }

  async unregister(name: string): Promise<void> {
    await (await this.machine1()).unregisterMachine(name);
  }

  private async test(member: string, signature: string, body: unknown[]): Promise<void> {
    const conn = await this.connection();
    await conn.call({
      destination: 'org.freedesktop.machine1',
      path: '/org/freedesktop/machine1',
      interface: TEST_IFACE,
      member,
      signature,
      body,
    });
  }

  /**
   * From now on the double announces each call to `member` with the signal `Received` on the test
   * interface. Only members asked for: a signal for every call doubled its bus traffic.
   */
  async watch(member: string): Promise<void> {
    await this.test('Watch', 's', [member]);
  }

  /** Resolves when the double receives a call to `member` (subscribe before causing the call). */
  async received(member: string, timeoutMs = 10_000): Promise<{ arrived: Promise<void> }> {
    const conn = await BusConnection.open(this.bus.address);
    await conn.addMatch(`type='signal',interface='${TEST_IFACE}',member='Received'`);
    const arrived = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.close();
        reject(new Error(`the double received no ${member} call`));
      }, timeoutMs);
      conn.onSignal((s) => {
        if (s.member !== 'Received' || s.body[0] !== member) return;
        clearTimeout(timer);
        conn.close();
        resolve();
      });
    });
    await this.watch(member);
    return { arrived }; // wrapped: awaiting received() must not wait for the call itself
  }

  async setAddresses(name: string, addresses: string[]): Promise<void> {
    const list = addresses.map((a) => {
      const bytes = parseAddress(a);
      if (!bytes) throw new Error(`bad address ${a}`);
      return [bytes.length === 4 ? 2 : 10, bytes];
    });
    await this.test('SetAddresses', 'sa(iay)', [name, list]);
  }

  async setNoPrivateNetworking(name: string): Promise<void> {
    await this.test('SetNoPrivateNetworking', 's', [name]);
  }

  async seed(machines: FakeMachine[]): Promise<void> {
    await this.test('Seed', 's', [JSON.stringify(machines)]);
  }

  /** Registers machines without sending MachineNew (a lost signal). */
  async seedQuietly(machines: FakeMachine[]): Promise<void> {
    await this.test('SeedQuietly', 's', [JSON.stringify(machines)]);
  }

  /** Unregisters a machine without sending MachineRemoved (a lost signal). */
  async dropQuietly(name: string): Promise<void> {
    await this.test('DropQuietly', 's', [name]);
  }

  /** Delays every answer to `member` (or all, when member is '') by `ms`. */
  async stall(member: string, ms: number): Promise<void> {
    if (member === '') await this.test('SetStall', 'u', [ms]);
    else await this.test('SetStallMethod', 'su', [member, ms]);
  }

  async hang(on: boolean): Promise<void> {
    await this.test('SetHang', 'b', [on]);
  }

  async stop(): Promise<void> {
    this.conn?.close();
    await this.killMachined('SIGTERM');
    await this.bus.stop();
  }
}
