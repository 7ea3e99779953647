/**
 * procHost's readers on the real /proc and on real files: the synchronous reader of kernel files
 * (stat, uid_map, gid_map) and the cache of container account files, which reads a file again only
 * when its signature (device, inode, size, mtime, ctime) changed.
 */
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AccountFileCache, procHost, readProcFile, statStartTime } from '../src/registry-client/host.js';
import { startTime } from './support/world.js';
import { tempDir } from './support/varlink.js';

/** A PID above any pid_max: never a process. */
const NO_PROCESS = 99_999_999;

test("readIdMap gives a live process's ranges (this one: the identity map of the initial namespace)", async (t) => {
  const read = await procHost.readIdMap(process.pid, 'uid');
  t.deepEqual(read, { kind: 'ok', ranges: [{ inner: 0, outer: 0, count: 4294967295 }] });
  t.deepEqual(await procHost.readIdMap(process.pid, 'gid'), read);
});

test('readIdMap of a process that does not exist is unreadable, with the errno name as the reason', async (t) => {
  t.deepEqual(await procHost.readIdMap(NO_PROCESS, 'uid'), { kind: 'unreadable', reason: 'ENOENT' });
});

test('startTime is the start time in /proc/PID/stat, and undefined once the process is gone', async (t) => {
  t.is(await procHost.startTime(process.pid), await startTime(process.pid));
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  const pid = child.pid ?? NO_PROCESS;
  const started = await procHost.startTime(pid);
  t.true(typeof started === 'number' && started > 0);
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
  t.is(await procHost.startTime(pid), undefined);
});

test('statStartTime reads field 22, counting from the last parenthesis (comm may hold spaces and parentheses)', (t) => {
  // Fields 3..21, then 22 (starttime), then more: the shape of a real line.
  const tail = (start: string): string =>
    `S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 ${start} 1000000 200 18446744073709551615`;
  t.is(statStartTime(`4242 (sleep) ${tail('123456')}`), 123456);
  t.is(statStartTime(`4242 (a b) (c) ) ${tail('99')}`), 99, 'spaces and parentheses in comm');
  t.is(
    statStartTime('4242 (x) S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 77\n'),
    77,
    'ended by the newline',
  );
  t.is(
    statStartTime('4242 (x) S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 55'),
    55,
    'field 22 last on the line',
  );
  t.is(statStartTime('4242 (x) S 1 2 3'), undefined, 'too few fields');
  t.is(statStartTime(`4242 x ${tail('1')}`), undefined, 'no parenthesis');
  t.is(statStartTime(`4242 (x) ${tail('12a')}`), undefined, 'not a number');
  t.is(statStartTime(`4242 (x) ${tail('')}`), undefined, 'an empty field is not 0');
});

test('exists is signal 0: true for a running process, false once it is gone', async (t) => {
  t.true(procHost.exists?.(process.pid));
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  const pid = child.pid ?? NO_PROCESS;
  t.true(procHost.exists?.(pid));
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
  t.false(procHost.exists?.(pid));
  t.false(procHost.exists?.(NO_PROCESS));
});

test('readProcFile reads whole files, and refuses one larger than any /proc file it is meant for', async (t) => {
  const dir = tempDir(t);
  const small = join(dir, 'small');
  await writeFile(small, 'a'.repeat(5000));
  t.deepEqual(readProcFile(small), { ok: true, text: 'a'.repeat(5000) });
  const large = join(dir, 'large');
  await writeFile(large, 'b'.repeat(70 * 1024));
  t.deepEqual(readProcFile(large), { ok: false, reason: 'too large' });
  t.deepEqual(readProcFile(join(dir, 'absent')), { ok: false, reason: 'ENOENT' });
});

test('an account file is read again only when it changed or was replaced', async (t) => {
  const dir = tempDir(t);
  await mkdir(join(dir, 'etc'));
  const path = join(dir, 'etc', 'passwd');
  const cache = new AccountFileCache();
  await writeFile(path, 'root:x:0:0::/root:/bin/sh\n');
  const first = await cache.read(dir, 'passwd');
  t.deepEqual(first, { kind: 'ok', accounts: [{ name: 'root', id: 0 }] });
  const again = await cache.read(dir, 'passwd');
  t.true(
    again.kind === 'ok' && first.kind === 'ok' && again.accounts === first.accounts,
    'unchanged: not read again',
  );
  await writeFile(path, 'root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n');
  t.deepEqual(await cache.read(dir, 'passwd'), {
    kind: 'ok',
    accounts: [
      { name: 'root', id: 0 },
      { name: 'alice', id: 1000 },
    ],
  });
  // replaced by another file (another inode), as a different container behind a reused PID
  await writeFile(join(dir, 'other'), 'bob:x:1001:1001::/home/bob:/bin/sh\n');
  await rename(join(dir, 'other'), path);
  t.deepEqual(await cache.read(dir, 'passwd'), { kind: 'ok', accounts: [{ name: 'bob', id: 1001 }] });
  // replaced by a symlink to the very file it was: the link is refused, not followed from the cache
  await rename(path, join(dir, 'etc', 'real'));
  await symlink('real', path);
  t.deepEqual(await cache.read(dir, 'passwd'), { kind: 'unreadable', reason: 'ELOOP' });
  await rm(path);
  t.deepEqual(await cache.read(dir, 'passwd'), { kind: 'unreadable', reason: 'ENOENT' });
});

test('an account file that is a directory or a FIFO is unreadable, and a FIFO is not waited for', async (t) => {
  const dir = tempDir(t);
  await mkdir(join(dir, 'etc'));
  const path = join(dir, 'etc', 'group');
  const cache = new AccountFileCache();
  await writeFile(path, 'root:x:0:\n');
  t.deepEqual(await cache.read(dir, 'group'), { kind: 'ok', accounts: [{ name: 'root', id: 0 }] });
  await rm(path);
  await mkdir(path);
  t.deepEqual(await cache.read(dir, 'group'), {
    kind: 'unreadable',
    reason: 'etc/group is not a regular file',
  });
  execFileSync('mkfifo', [join(dir, 'etc', 'passwd')]);
  // no writer ever comes: a blocking open would never return (the test's timeout would end it)
  t.deepEqual(await cache.read(dir, 'passwd'), {
    kind: 'unreadable',
    reason: 'etc/passwd is not a regular file',
  });
  const viaDaemon = await procHost.readAccounts(NO_PROCESS, dir, 'passwd');
  t.is(viaDaemon.kind, 'unreadable');
});

test('readAccounts falls back to the registered root directory when /proc/PID/root is not there', async (t) => {
  const dir = tempDir(t);
  await mkdir(join(dir, 'etc'));
  await writeFile(join(dir, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\nsvc:x:999:999::/:/bin/false\n');
  t.deepEqual(await procHost.readAccounts(NO_PROCESS, dir, 'passwd'), {
    kind: 'ok',
    accounts: [
      { name: 'root', id: 0 },
      { name: 'svc', id: 999 },
    ],
    source: 'root-directory',
    leaderRootProblem: 'ENOENT',
  });
  t.is((await procHost.readAccounts(NO_PROCESS, dir, 'group')).kind, 'unreadable');
});
