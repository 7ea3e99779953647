/**
 * The real clients against our socket: nss-systemd (through getent) and userdbctl from systemd 252.
 * They only look in /run/systemd/userdb/, so each runs in a private mount namespace where a tmpfs
 * covers /run/systemd and our socket's directory is bound to /run/systemd/userdb; the host's /run is
 * never touched. Needs root, unshare, getent and userdbctl (package systemd-userdbd).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import test from 'ava';
import { userDatabaseInterfaces } from '../src/userdb/service.js';
import { labTable } from './support/lab-machines.js';
import { startServer } from './support/varlink.js';

const missing = [
  process.getuid?.() === 0 ? undefined : 'root',
  ...['/usr/bin/unshare', '/usr/bin/getent', '/usr/bin/userdbctl', '/run/systemd'].filter(
    (p) => !existsSync(p),
  ),
].filter((x) => x !== undefined);
const realTest = missing.length === 0 ? test : test.skip;
const needs = missing.length === 0 ? '' : ` (skipped: needs ${missing.join(', ')})`;

interface Run {
  readonly status: number;
  readonly stdout: string;
}

/** Runs argv with our socket as the only userdb service. Asynchronous: our server is in-process. */
function withOurUserdb(socketDir: string, argv: readonly string[]): Promise<Run> {
  const script =
    'mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/userdb && mount --bind "$0" /run/systemd/userdb && exec "$@"';
  return new Promise((resolve, reject) => {
    execFile(
      'unshare',
      ['-m', '--propagation', 'private', 'sh', '-c', script, socketDir, ...argv],
      { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', SYSTEMD_COLORS: '0' }, timeout: 30_000 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number')
          reject(new Error(`${argv.join(' ')}: ${err.message} ${stderr}`));
        else resolve({ status: typeof err?.code === 'number' ? err.code : 0, stdout });
      },
    );
  });
}

async function ourSocketDir(t: Parameters<typeof startServer>[0]): Promise<string> {
  const { path } = await startServer(t, (server) => {
    for (const iface of userDatabaseInterfaces(labTable())) server.addInterface(iface);
  });
  return dirname(path);
}

realTest(`getent resolves container users and groups through nss-systemd${needs}`, async (t) => {
  const dir = await ourSocketDir(t);
  const line = 'vu-testct-1000:x:656360:65534:UID 1000 of Container testct:/:/usr/sbin/nologin\n';
  t.deepEqual(await withOurUserdb(dir, ['getent', 'passwd', 'vu-testct-1000']), { status: 0, stdout: line });
  t.deepEqual(await withOurUserdb(dir, ['getent', 'passwd', '656360']), { status: 0, stdout: line });
  t.deepEqual(await withOurUserdb(dir, ['getent', 'group', 'vg-multi-1999']), {
    status: 0,
    stdout: 'vg-multi-1999:x:984039:\n',
  });
  // A dotted machine has no users (machined 252 alike): getent's "not found" status is 2.
  t.is((await withOurUserdb(dir, ['getent', 'passwd', 'vu-my.ct-0'])).status, 2);
});

realTest(`getent passwd lists container users, which machined cannot${needs}`, async (t) => {
  const dir = await ourSocketDir(t);
  const { status, stdout } = await withOurUserdb(dir, ['getent', 'passwd']);
  t.is(status, 0);
  const ours = stdout.split('\n').filter((l) => l.startsWith('vu-'));
  t.deepEqual(ours.map((l) => l.split(':')[0]).sort(), [
    'vu-abcdefghijklmnopqrstuvw-0',
    'vu-abcdefghijklmnopqrstuvwxyz-0',
    'vu-edge-0',
    'vu-multi-0',
    'vu-testct-0',
  ]);
});

realTest(`userdbctl accepts our records as they are${needs}`, async (t) => {
  const dir = await ourSocketDir(t);
  const user = await withOurUserdb(dir, ['userdbctl', '--no-pager', '-j', 'user', 'vu-testct-1000']);
  t.is(user.status, 0);
  t.deepEqual(JSON.parse(user.stdout), {
    userName: 'vu-testct-1000',
    uid: 656360,
    gid: 65534,
    realName: 'UID 1000 of Container testct',
    homeDirectory: '/',
    shell: '/usr/sbin/nologin',
    locked: true,
    service: 'io.systemd.Machine',
    disposition: 'container',
  });
  const listed = await withOurUserdb(dir, ['userdbctl', '--no-pager', '-N', '--output=classic', 'user']);
  t.is(listed.status, 0);
  t.true(listed.stdout.includes('vu-testct-0:x:655360:65534:UID 0 of Container testct:/:/usr/sbin/nologin'));
  const group = await withOurUserdb(dir, ['userdbctl', '--no-pager', '-j', 'group', 'vg-testct-0']);
  t.like(JSON.parse(group.stdout), { groupName: 'vg-testct-0', gid: 655360 });
});
