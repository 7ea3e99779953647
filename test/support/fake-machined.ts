/**
 * FakeMachined — a TEST DOUBLE of org.freedesktop.machine1 for fast tests and benchmarks (thousands
 * of machines, stalls, crashes), where the real machined (test/support/machined-lab.ts) is too slow
 * or cannot be made to misbehave. It implements the calls and signals the registry uses, with
 * machined's error names; addresses are whatever a test sets through the test-only interface
 * `org.mymachinesd.Test.FakeMachined` (machined itself reads them from the container's netns).
 *
 * Run as a process: `node fake-machined.js BUS_ADDRESS [STATE_FILE]`; it prints `ready` once it owns
 * the name. With a state file it reloads its machines on start and re-announces them, as machined
 * does with /run/systemd/machines.
 */
import dbus, { Message, MessageType, Variant, type MessageBus } from '@particle/dbus-next';
import { readFileSync, writeFileSync } from 'node:fs';
import { machineObjectPath } from '../../src/registry-client/machine1.js';

const NAME = 'org.freedesktop.machine1';
const PATH = '/org/freedesktop/machine1';
const MANAGER = 'org.freedesktop.machine1.Manager';
const TEST = 'org.mymachinesd.Test.FakeMachined';
const PROPS = 'org.freedesktop.DBus.Properties';

export interface FakeMachine {
  name: string;
  id: string; // hex
  service: string;
  class: 'container' | 'vm';
  leader: number;
  rootDirectory: string;
  netif: number[];
  /** [family, bytes] or the name of the error GetMachineAddresses answers with. */
  addresses: [number, number[]][] | 'NoPrivateNetworking';
  timestamp: string;
}

/**
 * A FakeMachine: a container of service `test`, no root directory, no network interfaces, no
 * addresses, registered at Timestamp 1 µs; `extra` overrides any of it.
 */
export function fakeMachine(name: string, leader: number, extra: Partial<FakeMachine> = {}): FakeMachine {
  return {
    name,
    id: '',
    service: 'test',
    class: 'container',
    leader,
    rootDirectory: '',
    netif: [],
    addresses: [],
    timestamp: '1',
    ...extra,
  };
}

class Fail extends Error {
  constructor(
    readonly dbusName: string,
    message: string,
  ) {
    super(message);
  }
}

/** What the double does from its start, before a test could ask it over the bus (`FAKE_MACHINED_START`). */
export interface FakeStartOptions {
  /** Member → ms every answer to it is delayed, as `SetStallMethod` does. */
  readonly stall?: Readonly<Record<string, number>>;
  /** Members announced with `Received`, as `Watch` does. */
  readonly watch?: readonly string[];
}

export class FakeMachined {
  readonly machines = new Map<string, FakeMachine>();
  /** Object path → machine: property calls find their machine without a scan (10,000 machines in benchmarks). */
  private readonly byPath = new Map<string, FakeMachine>();
  private stallMs = 0;
  private readonly stallByMember = new Map<string, number>();
  private hang = false;
  /**
   * Members whose calls are announced with the test signal `Received` (asked for by `Watch`, which
   * `FakeMachinedHandle.received` calls). Only those: a signal for every call doubled the double's
   * and dbus-daemon's work, and bench:scale's bare fetch and first sync measured it (2026-12-04).
   */
  private readonly watched = new Set<string>();

  constructor(
    private readonly bus: MessageBus,
    private readonly stateFile: string | undefined,
    /** Stalls and watched members from the first call on (a restarted double is asked at once). */
    from: FakeStartOptions = {},
  ) {
    for (const [member, ms] of Object.entries(from.stall ?? {})) this.stallByMember.set(member, ms);
    for (const member of from.watch ?? []) this.watched.add(member);
  }

  async start(): Promise<void> {
    if (this.stateFile) {
      try {
        for (const m of JSON.parse(readFileSync(this.stateFile, 'utf8')) as FakeMachine[]) {
          this.machines.set(m.name, m);
          this.byPath.set(machineObjectPath(m.name), m);
        }
      } catch {
        // no state yet
      }
    }
    this.bus.addMethodHandler((msg: Message) => {
      if (msg.type !== MessageType.METHOD_CALL) return false;
      void this.dispatch(msg);
      return true;
    });
    await this.bus.requestName(NAME, 4 /* DO_NOT_QUEUE */);
    // machined re-announces every machine it loaded on start (reference §5.4)
    for (const m of this.machines.values()) this.signal('MachineNew', m.name);
  }

  private async dispatch(msg: Message): Promise<void> {
    if (this.hang && msg.interface !== TEST) return; // never answers: the caller's deadline must fire
    // The answer is computed first and delivered after the stall, so a test can change the state in
    // between (e.g. register a machine while a ListMachines answer without it is on its way).
    const stall = msg.interface === TEST ? 0 : (this.stallByMember.get(msg.member) ?? this.stallMs);
    // tests wait on this instead of sleeping until a call "must" have arrived
    if (msg.interface !== TEST && this.watched.has(msg.member))
      this.bus.send(Message.newSignal(PATH, TEST, 'Received', 's', [msg.member]));
    try {
      const [signature, body] = this.handle(msg);
      if (stall > 0) await new Promise((r) => setTimeout(r, stall));
      this.bus.send(Message.newMethodReturn(msg, signature, body));
    } catch (err) {
      if (stall > 0) await new Promise((r) => setTimeout(r, stall));
      const name = err instanceof Fail ? err.dbusName : 'org.freedesktop.DBus.Error.Failed';
      // Reflect.apply: the typings of Message.newError wrongly want a string where the runtime takes
      // the call being answered
      const text = err instanceof Error ? err.message : String(err);
      // eslint-disable-next-line @typescript-eslint/unbound-method -- a static factory, applied to its class
      const reply: unknown = Reflect.apply(Message.newError, Message, [msg, name, text]);
      if (reply instanceof Message) this.bus.send(reply);
    }
  }

  private handle(msg: Message): [string, unknown[]] {
    const body = msg.body as unknown[];
    const str = (i: number): string => String(body[i]);
    if (msg.interface === PROPS && (msg.member === 'GetAll' || msg.member === 'Get')) {
      const m = this.byPath.get(msg.path);
      if (!m) throw new Fail('org.freedesktop.DBus.Error.UnknownObject', `Unknown object '${msg.path}'.`);
      const props = machineProperties(m);
      if (msg.member === 'GetAll') return ['a{sv}', [props]];
      const v = props[str(1)];
      if (!v) throw new Fail('org.freedesktop.DBus.Error.UnknownProperty', 'Unknown property');
      return ['v', [v]];
    }
    if (msg.interface === TEST) return this.handleTest(msg.member, body);
    if (msg.interface !== MANAGER || msg.path !== PATH)
      throw new Fail('org.freedesktop.DBus.Error.UnknownMethod', `Unknown method ${msg.member}`);
    switch (msg.member) {
      case 'ListMachines':
        // machined lists in hashmap order, unrelated to registration order; listing by name makes
        // that visible to tests (registering "zulu" before "alpha" lists "alpha" first)
        return [
          'a(ssso)',
          [
            [...this.machines.values()]
              .sort((a, b) => (a.name < b.name ? -1 : 1))
              .map((m) => [m.name, m.class, m.service, machineObjectPath(m.name)]),
          ],
        ];
      case 'GetMachine':
        return ['o', [machineObjectPath(this.get(str(0)).name)]];
      case 'GetMachineAddresses': {
        const m = this.get(str(0));
        if (m.class !== 'container')
          throw new Fail(
            'org.freedesktop.DBus.Error.NotSupported',
            'Requesting IP address data is only supported on container machines.',
          );
        if (m.addresses === 'NoPrivateNetworking')
          throw new Fail(
            'org.freedesktop.machine1.NoPrivateNetworking',
            `Machine ${m.name} does not use private networking`,
          );
        return ['a(iay)', [m.addresses.map(([f, b]) => [f, Buffer.from(b)])]];
      }
      case 'RegisterMachine':
      case 'RegisterMachineWithNetwork':
      case 'CreateMachine':
      case 'CreateMachineWithNetwork': {
        const name = str(0);
        if (this.machines.has(name))
          throw new Fail('org.freedesktop.machine1.MachineExists', `Machine '${name}' already exists`);
        const withNetwork = msg.member.endsWith('WithNetwork');
        this.add({
          name,
          id: Buffer.from(body[1] as Buffer).toString('hex'),
          service: str(2),
          class: str(3) === 'vm' ? 'vm' : 'container',
          leader: Number(body[4]),
          rootDirectory: str(5),
          netif: withNetwork ? (body[6] as number[]) : [],
          addresses: [],
          timestamp: String(BigInt(Date.now()) * 1000n),
        });
        return ['o', [machineObjectPath(name)]];
      }
      case 'UnregisterMachine':
      case 'TerminateMachine':
        this.remove(this.get(str(0)).name);
        return ['', []];
      default:
        throw new Fail(
          'org.freedesktop.DBus.Error.NotSupported',
          `${msg.member} is not implemented by the test double`,
        );
    }
  }

  private handleTest(member: string, body: unknown[]): [string, unknown[]] {
    switch (member) {
      case 'SetAddresses': {
        const m = this.get(String(body[0]));
        m.addresses = (body[1] as [number, Buffer][]).map(([f, b]) => [f, [...b]]);
        this.save();
        return ['', []];
      }
      case 'SetNoPrivateNetworking':
        this.get(String(body[0])).addresses = 'NoPrivateNetworking';
        return ['', []];
      case 'Seed': {
        // bulk registration for scale tests: one signal per machine, like N RegisterMachine calls
        for (const m of JSON.parse(String(body[0])) as FakeMachine[]) this.add(m, false);
        this.save();
        return ['', []];
      }
      case 'SeedQuietly': {
        // registration whose MachineNew signal is lost (never sent)
        for (const m of JSON.parse(String(body[0])) as FakeMachine[]) this.add(m, false, false);
        this.save();
        return ['', []];
      }
      case 'DropQuietly':
        // removal whose MachineRemoved signal is lost (never sent)
        this.remove(this.get(String(body[0])).name, false);
        return ['', []];
      case 'SetStall':
        this.stallMs = Number(body[0]);
        return ['', []];
      case 'SetStallMethod':
        this.stallByMember.set(String(body[0]), Number(body[1]));
        return ['', []];
      case 'Watch':
        this.watched.add(String(body[0]));
        return ['', []];
      case 'SetHang':
        this.hang = Boolean(body[0]);
        return ['', []];
      default:
        throw new Fail('org.freedesktop.DBus.Error.UnknownMethod', `Unknown test method ${member}`);
    }
  }

  private get(name: string): FakeMachine {
    const m = this.machines.get(name);
    if (!m) throw new Fail('org.freedesktop.machine1.NoSuchMachine', `No machine '${name}' known`);
    return m;
  }

  /** `announce`: false for a registration whose MachineNew is lost. */
  private add(m: FakeMachine, save = true, announce = true): void {
    this.machines.set(m.name, m);
    this.byPath.set(machineObjectPath(m.name), m);
    if (save) this.save();
    if (announce) this.signal('MachineNew', m.name);
  }

  /** `announce`: false for a removal whose MachineRemoved is lost. */
  private remove(name: string, announce = true): void {
    this.machines.delete(name);
    this.byPath.delete(machineObjectPath(name));
    this.save();
    if (announce) this.signal('MachineRemoved', name);
  }

  private signal(member: string, name: string): void {
    this.bus.send(Message.newSignal(PATH, MANAGER, member, 'so', [name, machineObjectPath(name)]));
  }

  private save(): void {
    if (this.stateFile) writeFileSync(this.stateFile, JSON.stringify([...this.machines.values()]));
  }
}

function machineProperties(m: FakeMachine): Record<string, Variant> {
  return {
    Name: new Variant('s', m.name),
    Id: new Variant('ay', Buffer.from(m.id, 'hex')),
    Timestamp: new Variant('t', BigInt(m.timestamp)),
    TimestampMonotonic: new Variant('t', 0n),
    Service: new Variant('s', m.service),
    Unit: new Variant('s', `machine-${m.name}.scope`),
    Leader: new Variant('u', m.leader),
    Class: new Variant('s', m.class),
    RootDirectory: new Variant('s', m.rootDirectory),
    NetworkInterfaces: new Variant('ai', m.netif),
    State: new Variant('s', 'running'),
  };
}

async function main(): Promise<void> {
  const [busAddress, stateFile] = process.argv.slice(2);
  if (!busAddress) throw new Error('usage: fake-machined.js BUS_ADDRESS [STATE_FILE]');
  const bus = dbus.sessionBus({ busAddress, authMethods: ['EXTERNAL'] });
  bus.on('error', (err: unknown) => {
    process.stderr.write(`fake-machined: bus error ${String(err)}\n`);
    process.exit(1);
  });
  await new Promise<void>((resolve) => bus.once('connect', () => resolve()));
  const from = process.env.FAKE_MACHINED_START;
  await new FakeMachined(bus, stateFile, from ? (JSON.parse(from) as FakeStartOptions) : {}).start();
  process.stdout.write('ready\n');
}

if (process.argv[1]?.endsWith('fake-machined.js')) {
  main().catch((err: unknown) => {
    process.stderr.write(`fake-machined: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
