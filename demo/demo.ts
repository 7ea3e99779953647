/**
 * `npm run demo`: mymachinesd end to end, for a person to watch.
 *
 * As root: a private mount and network namespace (nothing on the host changes), a private system
 * bus, the REAL systemd-machined 252, two namespaced containers and a VM registered with it, and
 * mymachinesd; then the clients a user would type — dig, getent, ping, ls, ps, userdbctl,
 * mymachinesd list/resolve — and everything is torn down again.
 * Not root: namespaces and machined are out of reach, so the test registry (FakeMachined, a test
 * double of machined) stands in, and only what needs no privileges is shown.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chown, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DaemonHandle, BIN } from '../test/support/daemon.js';
import { FakeMachinedHandle } from '../test/support/fake.js';
import { MachinedLab, type LabMachineSpec } from '../test/support/machined-lab.js';

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s: string): void => void process.stdout.write(`\n${bold(`== ${s}`)}\n`);

const MACHINES: LabMachineSpec[] = [
  {
    name: 'web1',
    class: 'container',
    idMap: '0 100000 65536',
    privateNetwork: true,
    interfaces: [
      {
        hostIf: 've-web1',
        inner: 'host0',
        addresses: ['198.51.100.11/24', 'fd42::11/64'],
        hostAddresses: ['198.51.100.1/24'],
      },
    ],
    users: [
      { name: 'root', id: 0 },
      { name: 'www-data', id: 33 },
      { name: 'alice', id: 1000 },
    ],
    groups: [
      { name: 'root', id: 0 },
      { name: 'www-data', id: 33 },
      { name: 'alice', id: 1000 },
    ],
  },
  {
    name: 'db',
    class: 'container',
    idMap: '0 200000 65536',
    privateNetwork: true,
    interfaces: [{ hostIf: 've-db', inner: 'host0', addresses: ['198.51.100.21/24', 'fd42::21/64'] }],
    users: [
      { name: 'root', id: 0 },
      { name: 'postgres', id: 105 },
    ],
    groups: [{ name: 'root', id: 0 }],
  },
  {
    name: 'vm1',
    class: 'vm',
    interfaces: [
      {
        hostIf: 've-vm1',
        inner: 'eth0',
        addresses: ['203.0.113.51/24', 'fd43::51/64'],
        hostAddresses: ['203.0.113.1/24', 'fd43::1/64'],
      },
    ],
  },
];

async function asRoot(): Promise<void> {
  say('starting: a private namespace, a private bus, the real systemd-machined 252, 2 containers and a VM');
  const nsswitch = readFileSync('/etc/nsswitch.conf', 'utf8').replace(
    /^hosts:.*$/m,
    'hosts:          files dns',
  );
  const lab = await MachinedLab.start(MACHINES, {
    nsswitch,
    resolvConf: 'nameserver 127.0.0.153\nsearch machine\noptions timeout:2 attempts:1\n',
  });
  let daemon: DaemonHandle | undefined;
  try {
    // the VM has talked to the host once: its neighbour entries exist, as for a running VM
    await lab.exec('ping', ['-c1', '-W2', '203.0.113.51']);
    await lab.exec('ping', ['-6', '-c1', '-W2', 'fd43::51']);
    const show = async (cmd: string, note?: string): Promise<void> => {
      process.stdout.write(`\n$ ${cmd}${note ? `    # ${note}` : ''}\n`);
      const r = await lab.exec('sh', ['-c', cmd], {
        PATH: `${join(process.cwd(), 'bin')}:${process.env.PATH ?? ''}`,
      });
      process.stdout.write(r.stdout + r.stderr);
    };
    await show(
      'busctl --no-pager call org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager ListMachines',
      "machined's own view",
    );

    say('mymachinesd serve (DNS on 127.0.0.153:53, userdb, control socket)');
    daemon = await DaemonHandle.start(lab.world, ['--bus', lab.busAddress]);
    process.stdout.write(`${daemon.lines.join('\n')}\n`);

    say('what mymachinesd knows');
    await show('mymachinesd list');
    await show('mymachinesd resolve web1', 'as a socket would use them: link-local with its interface');

    say('names → addresses, for every client');
    await show('dig +noall +answer web1.machine A web1.machine AAAA', 'any DNS client');
    await show('dig +noall +answer vm1.machine', 'a VM: nss-mymachines cannot do this');
    await show('dig +noall +answer -x 198.51.100.21', 'reverse lookups');
    await show('getent hosts web1', 'glibc, resolv.conf: nameserver 127.0.0.153 / search machine');
    await show('ping -c1 -W2 web1');
    await show('dig +noall +comments nosuch.machine | grep status', 'unknown names: NXDOMAIN');

    say('UIDs/GIDs → users and groups (io.systemd.UserDatabase)');
    const file = join(lab.world.dir, 'owned-by-web1-alice');
    await writeFile(file, 'hello\n');
    await chown(file, 101000, 100033); // alice:www-data inside web1
    await show(`ls -ln ${file}; ls -l ${file}`, 'numbers, then names');
    const leader = lab.machines.get('web1')?.leaderPid ?? 0;
    await show(`ps -o user,group,pid,args -p ${leader}`);
    await show('getent passwd vu-web1-1000 vu-db-105; getent group vg-web1-33');
    // the containers' own account names are read right after `ready` (logged when applied)
    await daemon.waitFor(/read the accounts of \d+ container/);
    await show('getent passwd | grep "^vu-"', "enumeration: machined's own userdb cannot list these");
    await show('userdbctl --no-pager -s io.mymachinesd.Machine user vu-web1-0');
    await show('mymachinesd user 200105', 'the CLI asks the userdb socket directly');

    say('stopping');
    process.stdout.write(
      `exit status ${String(await daemon.stop())}\n${daemon.lines.slice(-2).join('\n')}\n`,
    );
    daemon = undefined;
  } finally {
    await daemon?.stop();
    await lab.dispose();
  }
  say('done: namespaces, bus, machined, containers and daemon are gone; nothing on the host was changed');
}

/** Without root: FakeMachined (test double) on a private bus, the daemon on loopback port 0. */
async function unprivileged(): Promise<void> {
  say(
    'not root: using the test registry (FakeMachined, a test double of machined) instead of systemd-machined',
  );
  const fake = await FakeMachinedHandle.start();
  const dir = fake.bus.dir;
  const { spawn } = await import('node:child_process');
  const child = spawn(
    process.execPath,
    [
      BIN,
      'serve',
      '--bus',
      fake.busAddress,
      '--dns',
      '127.0.0.1:0',
      '--userdb',
      join(dir, 'io.mymachinesd.Machine'),
      '--control',
      join(dir, 'control'),
    ],
    {
      stdio: ['ignore', 'inherit', 'pipe'],
    },
  );
  try {
    const log: string[] = [];
    const port = await new Promise<number>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        log.push(d.toString());
        const m = /udp 127\.0\.0\.1:(\d+)/.exec(log.join(''));
        if (m && log.join('').includes('<6>ready')) resolve(Number(m[1]));
      });
      child.once('exit', (code) =>
        reject(new Error(`mymachinesd exited (${String(code)}): ${log.join('')}`)),
      );
    });
    process.stdout.write(log.join(''));
    await fake.register('web1');
    await fake.setAddresses('web1', ['192.0.2.11', '2001:db8::11']);
    const run = (cmd: string, args: string[]): Promise<void> =>
      new Promise((resolve) => {
        process.stdout.write(`\n$ ${cmd} ${args.join(' ')}\n`);
        execFile(cmd, args, (_err, stdout, stderr) => {
          process.stdout.write(stdout + stderr);
          resolve();
        });
      });
    await run('dig', [
      '@127.0.0.1',
      '-p',
      String(port),
      '+noall',
      '+answer',
      'web1.machine',
      'A',
      'web1.machine',
      'AAAA',
    ]);
    await run(process.execPath, [BIN, 'list', '--control', join(dir, 'control')]);
  } finally {
    child.kill('SIGTERM');
    await fake.stop();
  }
}

const main = process.getuid?.() === 0 ? asRoot : unprivileged;
main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
