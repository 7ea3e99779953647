/**
 * The REAL systemd-machined 252 (Debian's systemd-container) inside a World, with real namespaced
 * "containers" and a "VM", registered over D-Bus exactly as a container manager would. Recipe and
 * pitfalls: ../shared/lab/README.md; differences here: everything runs in the World's private mount
 * and network namespaces (own /run, own links), leaders sit in a cgroup2 unit path below a slice
 * that belongs to this World, and the containers get their own /etc/passwd and /etc/group.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { watch } from 'node:fs';
import { access, mkdir, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { BusConnection, matchRule, DBUS_NAME } from '../../src/registry-client/bus.js';
import { MACHINE1_NAME, Machine1Client } from '../../src/registry-client/machine1.js';
import { PrivateBus } from './dbus.js';
import { World, type WorldOptions } from './world.js';

export const MACHINED_BINARY = '/lib/systemd/systemd-machined';
export const MACHINED_USERDB = '/run/systemd/userdb/io.systemd.Machine';
const LEADER_PY = fileURLToPath(new URL('../../../test/support/leader.py', import.meta.url));
const CGROUP2_SUPER_MAGIC = 0x63677270;

export interface LabInterface {
  /** Host-side (World-side) link name, at most 15 characters. */
  readonly hostIf: string;
  readonly hostMac?: string;
  /** Name inside the machine. */
  readonly inner: string;
  readonly innerMac?: string;
  /** `ADDR/PLEN`, added with `nodad` for IPv6. */
  readonly addresses?: readonly string[];
  /** IPv6 `ADDR/PLEN` added with preferred_lft 0: machined leaves deprecated addresses out. */
  readonly deprecated?: readonly string[];
  /** World-side addresses on the host link (so the World can route to the machine). */
  readonly hostAddresses?: readonly string[];
}

export interface LabAccount {
  readonly name: string;
  readonly id: number;
}

export interface LabMachineSpec {
  readonly name: string;
  readonly class: 'container' | 'vm';
  /** Text for uid_map and gid_map (e.g. `0 100000 65536`); undefined = no user namespace. */
  readonly idMap?: string;
  /** Separate gid_map text when it differs from idMap. */
  readonly gidMap?: string;
  /** Own network namespace (containers) with these links; a VM's link peer goes to a named netns. */
  readonly privateNetwork?: boolean;
  readonly interfaces?: readonly LabInterface[];
  /** 32 hex digits, or undefined for no id. */
  readonly id?: string;
  /** Accounts in the container's own /etc/passwd and /etc/group (needs a user namespace). */
  readonly users?: readonly LabAccount[];
  readonly groups?: readonly LabAccount[];
}

export interface LabMachine {
  readonly spec: LabMachineSpec;
  readonly leader: ChildProcess;
  readonly leaderPid: number;
  readonly ifindexes: readonly number[];
  readonly rootDirectory: string;
}

/** The five machines of ../shared/lab (alpha, bravo-two, charlie, delta, echo). */
export const LAB_MACHINES: readonly LabMachineSpec[] = [
  {
    name: 'alpha',
    class: 'container',
    idMap: '0 100000 65536',
    privateNetwork: true,
    id: '0d1ab0a1c0ffee00d1ab0a1c0ffee001',
    interfaces: [
      {
        hostIf: 've-alpha',
        hostMac: '02:00:00:00:0a:00',
        inner: 'host0',
        innerMac: '02:00:00:00:0a:01',
        addresses: ['198.51.100.11/24', 'fd42::11/64'],
        deprecated: ['fd42::99/64'],
      },
    ],
    users: [
      { name: 'root', id: 0 },
      { name: 'daemon', id: 1 },
      { name: 'alice', id: 1000 },
      { name: 'nobody', id: 65534 },
    ],
    groups: [
      { name: 'root', id: 0 },
      { name: 'adm', id: 4 },
      { name: 'alice', id: 1000 },
      { name: 'nogroup', id: 65534 },
    ],
  },
  {
    name: 'bravo-two',
    class: 'container',
    idMap: '0 200000 65536',
    privateNetwork: true,
    interfaces: [
      {
        hostIf: 've-bravo0',
        hostMac: '02:00:00:00:0b:00',
        inner: 'host0',
        innerMac: '02:00:00:00:0b:01',
        addresses: ['198.51.100.21/24', '198.51.100.22/24', 'fd42::21/64'],
      },
      {
        hostIf: 've-bravo1',
        hostMac: '02:00:00:00:0b:10',
        inner: 'host1',
        innerMac: '02:00:00:00:0b:11',
        addresses: ['198.51.100.23/24', 'fd42:0:0:1::23/64'],
      },
    ],
    users: [
      { name: 'root', id: 0 },
      { name: 'bob', id: 1000 },
    ],
    groups: [{ name: 'root', id: 0 }],
  },
  { name: 'charlie', class: 'container' },
  { name: 'delta', class: 'container', idMap: '0 0 1', privateNetwork: true },
  {
    name: 'echo',
    class: 'vm',
    id: '0e0e0e0e0e0e4e0e8e0e0e0e0e0e0e0e',
    interfaces: [
      {
        hostIf: 've-echo',
        hostMac: '02:00:00:00:0e:00',
        inner: 'eth0',
        innerMac: '02:00:00:00:0e:01',
        addresses: ['198.51.100.51/24', 'fd42::51/64'],
        hostAddresses: ['198.51.100.50/24', 'fd42::50/64'],
      },
    ],
  },
];

export class MachinedLab {
  readonly machines = new Map<string, LabMachine>();
  private machined: ChildProcess | undefined;
  private readonly logs: string[] = [];
  private client: BusConnection | undefined;

  private constructor(
    readonly world: World,
    readonly bus: PrivateBus,
    readonly cgroupSlice: string,
  ) {}

  /** Starts a World, its bus and machined, then creates and registers `machines`. */
  static async start(
    machines: readonly LabMachineSpec[] = LAB_MACHINES,
    worldOptions: WorldOptions = {},
  ): Promise<MachinedLab> {
    const world = await World.create(worldOptions);
    try {
      const bus = await PrivateBus.start({ world });
      const slice = join(await cgroup2Root(), `mmdtest${world.holderPid}.slice`);
      await mkdir(join(slice, 'machine.slice'), { recursive: true });
      await world.trackCgroup(slice);
      await world.trackCgroup(join(slice, 'machine.slice'));
      const lab = new MachinedLab(world, bus, slice);
      await lab.startMachined();
      for (const spec of machines) {
        await lab.createMachine(spec);
        await lab.register(spec.name);
      }
      return lab;
    } catch (err) {
      await world.dispose();
      throw err;
    }
  }

  get busAddress(): string {
    return this.bus.address;
  }

  /** machined's userdb socket, as a path usable from the host. */
  get machinedUserdbPath(): string {
    return this.world.hostPath(MACHINED_USERDB);
  }

  get machinedPid(): number | undefined {
    return this.machined?.pid;
  }

  get machinedLog(): string {
    return this.logs.join('');
  }

  /** A bus connection for the test's own calls (busctl-equivalent). */
  async connection(): Promise<BusConnection> {
    if (!this.client || this.client.closed) this.client = await BusConnection.open(this.busAddress);
    return this.client;
  }

  async machine1(): Promise<Machine1Client> {
    return new Machine1Client(await this.connection());
  }

  async startMachined(): Promise<void> {
    this.machined = await startBusService(
      this.world,
      this.busAddress,
      MACHINED_BINARY,
      MACHINE1_NAME,
      this.logs,
    );
    await waitForPath(this.machinedUserdbPath);
  }

  /** Stops machined (SIGTERM; SIGKILL simulates a crash). Its state files stay, as after a crash. */
  async stopMachined(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.machined) await this.world.stop(this.machined, signal);
    this.machined = undefined;
  }

  async createMachine(spec: LabMachineSpec): Promise<LabMachine> {
    const flags = [
      ...(spec.idMap !== undefined ? ['--user', '--become-root'] : []),
      ...(spec.privateNetwork ? ['--net', `--uts=${spec.name}`] : []),
    ];
    const rootDirectory = join(this.world.dir, 'roots', spec.name);
    await mkdir(join(rootDirectory, 'etc'), { recursive: true });
    if (spec.users)
      await writeFile(join(rootDirectory, 'etc/passwd'), passwdText(spec.users), { mode: 0o644 });
    if (spec.groups)
      await writeFile(join(rootDirectory, 'etc/group'), groupText(spec.groups), { mode: 0o644 });
    const mounts = [
      ...(spec.users ? [`--bind=${join(rootDirectory, 'etc/passwd')}:/etc/passwd`] : []),
      ...(spec.groups ? [`--bind=${join(rootDirectory, 'etc/group')}:/etc/group`] : []),
    ];
    const leader = await this.world.spawn('/usr/bin/python3', [LEADER_PY, ...flags, ...mounts], {
      stdin: 'pipe',
    });
    const pid = leader.pid;
    if (pid === undefined || !leader.stdout || !leader.stdin) throw new Error('leader did not start');
    const lines = createInterface({ input: leader.stdout });
    const [first] = (await Promise.race([once(lines, 'line'), once(leader, 'exit')])) as [unknown];
    if (first !== 'unshared') throw new Error(`leader for ${spec.name} failed: ${String(first)}`);
    lines.close();
    if (spec.idMap !== undefined) {
      await writeFile(`/proc/${pid}/uid_map`, `${spec.idMap}\n`);
      await writeFile(`/proc/${pid}/gid_map`, `${spec.gidMap ?? spec.idMap}\n`);
    }
    const ifindexes: number[] = [];
    if (spec.privateNetwork) await inNetns(pid, 'ip', ['link', 'set', 'lo', 'up']);
    for (const nic of spec.interfaces ?? []) ifindexes.push(await this.addInterface(spec, pid, nic));
    // release: the leader becomes root in its namespace (if any), mounts its files and execs sleep
    leader.stdin.write('go\n');
    const scope = join(this.cgroupSlice, 'machine.slice', `machine-${unitEscape(spec.name)}.scope`);
    await mkdir(scope, { recursive: true });
    await this.world.trackCgroup(scope);
    await writeFile(join(scope, 'cgroup.procs'), String(pid));
    for (const nic of spec.interfaces ?? []) await this.waitLinkLocal(spec, pid, nic);
    const machine: LabMachine = { spec, leader, leaderPid: pid, ifindexes, rootDirectory };
    this.machines.set(spec.name, machine);
    return machine;
  }

  private vmNetns(spec: LabMachineSpec): string {
    return `mlab-${spec.name}`;
  }

  private async addInterface(spec: LabMachineSpec, pid: number, nic: LabInterface): Promise<number> {
    const w = this.world;
    const tmp = `vp-${nic.hostIf}`.slice(0, 15);
    await w.run('ip', [
      'link', 'add', nic.hostIf, ...(nic.hostMac ? ['address', nic.hostMac] : []),
      'type', 'veth', 'peer', 'name', tmp, ...(nic.innerMac ? ['address', nic.innerMac] : []),
    ]); // prettier-ignore
    // DAD off: link-local addresses are usable (and machined's list deterministic) at once.
    await w.run('sysctl', ['-qw', `net.ipv6.conf.${nic.hostIf}.accept_dad=0`]);
    const target = spec.class === 'vm' ? this.vmNetns(spec) : String(pid);
    if (spec.class === 'vm') {
      const r = await w.exec('ip', ['netns', 'add', target]);
      if (r.code !== 0 && !r.stderr.includes('File exists')) throw new Error(`ip netns add: ${r.stderr}`);
      await w.run('ip', ['-n', target, 'link', 'set', 'lo', 'up']);
    }
    await w.run('ip', ['link', 'set', tmp, 'netns', target]);
    const inside = (cmd: string, args: string[]): Promise<string> =>
      spec.class === 'vm' ? w.run('ip', ['netns', 'exec', target, cmd, ...args]) : inNetns(pid, cmd, args);
    await inside('ip', ['link', 'set', tmp, 'name', nic.inner]);
    await inside('sysctl', ['-qw', `net.ipv6.conf.${nic.inner}.accept_dad=0`]);
    await inside('ip', ['link', 'set', nic.inner, 'up']);
    for (const a of nic.addresses ?? [])
      await inside(
        'ip',
        a.includes(':')
          ? ['-6', 'addr', 'add', a, 'dev', nic.inner, 'nodad']
          : ['addr', 'add', a, 'dev', nic.inner],
      );
    for (const a of nic.deprecated ?? [])
      await inside('ip', ['-6', 'addr', 'add', a, 'dev', nic.inner, 'nodad', 'preferred_lft', '0']);
    await w.run('ip', ['link', 'set', nic.hostIf, 'up']);
    for (const a of nic.hostAddresses ?? [])
      await w.run(
        'ip',
        a.includes(':')
          ? ['-6', 'addr', 'add', a, 'dev', nic.hostIf, 'nodad']
          : ['addr', 'add', a, 'dev', nic.hostIf],
      );
    const links = JSON.parse(await w.run('ip', ['-j', 'link', 'show', nic.hostIf])) as {
      ifindex?: unknown;
    }[];
    const ifindex = links[0]?.ifindex;
    if (typeof ifindex !== 'number') throw new Error(`no ifindex for ${nic.hostIf}`);
    return ifindex;
  }

  /** Bounded wait for the kernel's fe80:: address on the machine's side of a link. */
  private async waitLinkLocal(spec: LabMachineSpec, pid: number, nic: LabInterface): Promise<void> {
    const args = ['-6', '-o', 'addr', 'show', 'dev', nic.inner, 'scope', 'link'];
    for (let i = 0; i < 250; i++) {
      const out =
        spec.class === 'vm'
          ? await this.world.run('ip', ['netns', 'exec', this.vmNetns(spec), 'ip', ...args])
          : await inNetns(pid, 'ip', args);
      if (out.includes('fe80') && !out.includes('tentative')) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`no link-local address on ${spec.name}/${nic.inner}`);
  }

  async register(name: string): Promise<string> {
    const m = this.machines.get(name);
    if (!m) throw new Error(`unknown lab machine ${name}`);
    const id = m.spec.id ? Buffer.from(m.spec.id, 'hex') : Buffer.alloc(0);
    const client = await this.machine1();
    const root = m.spec.users || m.spec.groups ? m.rootDirectory : '';
    return client.registerMachineWithNetwork(
      name,
      id,
      'mymachinesd-test',
      m.spec.class,
      m.leaderPid,
      root,
      m.ifindexes,
    );
  }

  async unregister(name: string): Promise<void> {
    await (await this.machine1()).unregisterMachine(name);
  }

  /** Kills a machine's leader (machined keeps it registered: there is no systemd to tell it). */
  async killLeader(name: string): Promise<void> {
    const m = this.machines.get(name);
    if (m) await this.world.stop(m.leader, 'SIGKILL');
  }

  /** Runs a command inside the World (netns + mount ns), with the bus address set. */
  exec(cmd: string, args: readonly string[] = [], env: NodeJS.ProcessEnv = {}): ReturnType<World['exec']> {
    return this.world.exec(cmd, args, {
      env: { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: this.busAddress, ...env },
    });
  }

  async dispose(): Promise<void> {
    this.client?.close();
    await this.stopMachined().catch(() => undefined);
    await this.bus.stop().catch(() => undefined);
    await this.world.dispose();
  }
}

function passwdText(users: readonly LabAccount[]): string {
  return users.map((u) => `${u.name}:x:${u.id}:${u.id}:${u.name}:/home/${u.name}:/bin/sh\n`).join('');
}

function groupText(groups: readonly LabAccount[]): string {
  return groups.map((g) => `${g.name}:x:${g.id}:\n`).join('');
}

/** systemd's unit name escaping (systemd-escape): `bravo-two` → `bravo\x2dtwo`. */
export function unitEscape(name: string): string {
  let out = '';
  let first = true;
  for (const ch of name) {
    if (ch === '/') out += '-';
    else if (/[A-Za-z0-9:_]/.test(ch) || (ch === '.' && !first)) out += ch;
    else for (const b of Buffer.from(ch)) out += `\\x${b.toString(16).padStart(2, '0')}`;
    first = false;
  }
  return out;
}

async function cgroup2Root(): Promise<string> {
  for (const path of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    const st = await statfs(path).catch(() => undefined);
    if (st?.type === CGROUP2_SUPER_MAGIC) return path;
  }
  throw new Error('no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified (machined needs one)');
}

/** Runs a command in a process's network namespace (from the host's mount namespace). */
function inNetns(pid: number, cmd: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', ['-t', String(pid), '-n', '--', cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve(Buffer.concat(out).toString())
        : reject(new Error(`${cmd} ${args.join(' ')} in netns of ${pid}: ${Buffer.concat(err).toString()}`)),
    );
  });
}

/**
 * Starts a systemd daemon (machined, resolved) in a World with debug logs on the console, and waits
 * until it owns its bus name. Its output is appended to `logs`.
 */
export async function startBusService(
  world: World,
  busAddress: string,
  binary: string,
  busName: string,
  logs: string[],
): Promise<ChildProcess> {
  const conn = await BusConnection.open(busAddress);
  try {
    const owned = waitForNameOwner(conn, busName);
    await owned.subscribed;
    const child = await world.spawn(binary, [], {
      env: {
        PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        DBUS_SYSTEM_BUS_ADDRESS: busAddress,
        SYSTEMD_LOG_LEVEL: 'debug',
        SYSTEMD_LOG_TARGET: 'console',
        SYSTEMD_LOG_COLOR: '0',
      },
    });
    child.stdout?.on('data', (d: Buffer) => logs.push(d.toString()));
    child.stderr?.on('data', (d: Buffer) => logs.push(d.toString()));
    await owned.done;
    return child;
  } finally {
    conn.close();
  }
}

/** Resolves when `name` has an owner: subscribe first, then check, so the event cannot be missed. */
export function waitForNameOwner(
  conn: BusConnection,
  name: string,
  timeoutMs = 10_000,
): { subscribed: Promise<void>; done: Promise<string> } {
  let off: () => void = () => undefined;
  const subscribed = conn
    .addMatch(
      matchRule({
        type: 'signal',
        sender: DBUS_NAME,
        interface: DBUS_NAME,
        member: 'NameOwnerChanged',
        arg0: name,
      }),
    )
    .then(() => undefined);
  const done = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not appear on the bus`)), timeoutMs);
    const finish = (owner: string): void => {
      clearTimeout(timer);
      off();
      resolve(owner);
    };
    off = conn.onSignal((s) => {
      const [n, , owner] = s.body;
      if (s.member === 'NameOwnerChanged' && n === name && typeof owner === 'string' && owner !== '')
        finish(owner);
    });
    subscribed.then(() => conn.getNameOwner(name).then((owner) => owner && finish(owner)), reject);
  });
  return { subscribed, done };
}

/** Resolves when a path exists, watching its directory (no polling). */
export function waitForPath(path: string, timeoutMs = 10_000): Promise<void> {
  return watchForPath(path, true, timeoutMs, `${path} did not appear`);
}

/** Whether a path exists now. */
export function pathExists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** Resolves once a path is gone, watching its directory (no polling). */
export function waitForPathGone(path: string, timeoutMs = 10_000): Promise<void> {
  return watchForPath(path, false, timeoutMs, `${path} is still there after ${timeoutMs} ms`);
}

/**
 * Resolves once the path exists (`present`) or is gone, else rejects with `failure` after
 * `timeoutMs`. The watch starts before the first look: fs/promises' watch() only starts on its
 * iterator's first next(), so a path removed between a first look and that call was waited for
 * until the timeout (seen once in a full run: daemon-cli's control socket "still there after
 * 10000 ms").
 */
function watchForPath(path: string, present: boolean, timeoutMs: number, failure: string): Promise<void> {
  const dir = path.slice(0, path.lastIndexOf('/'));
  return new Promise<void>((resolve, reject) => {
    const watcher = watch(dir);
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      watcher.close();
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(() => finish(new Error(failure)), timeoutMs);
    const check = (): void => {
      void pathExists(path).then((exists) => {
        if (exists === present) finish();
      });
    };
    watcher.on('change', check);
    watcher.on('error', finish);
    check();
  });
}
