/**
 * The test harness keeps its promise when a test process dies without dispose(): every process it
 * started in a World is stopped (by PID and start time), and the World's directory is removed.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { FakeMachinedHandle } from './support/fake.js';
import { startTime, World } from './support/world.js';

/**
 * This process's children with the command name `comm`. The kernel lists a thread's children in
 * /proc/PID/task/TID/children; Node spawns from its main thread, whose TID is the PID.
 */
async function children(comm: string): Promise<number[]> {
  const listed = await readFile(`/proc/${process.pid}/task/${process.pid}/children`, 'utf8');
  const found: number[] = [];
  for (const pid of listed.split(' ').filter((p) => p !== '')) {
    const name = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => undefined); // gone meanwhile
    if (name?.trim() === comm) found.push(Number(pid));
  }
  return found;
}

const ORPHAN_JS = fileURLToPath(new URL('./support/world-orphan.js', import.meta.url));

const made = z.object({ dir: z.string(), holder: z.number(), sleeper: z.number() });

async function until(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return check();
}

test('a test process killed without dispose(): its World stops what it started and leaves no directory', async (t) => {
  const child = spawn(process.execPath, [ORPHAN_JS], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
  const world = made.parse(JSON.parse(line));
  const sleeperStart = await startTime(world.sleeper);
  t.not(sleeperStart, undefined, 'the process started in the World runs');
  t.true(existsSync(world.dir));
  child.kill('SIGKILL');
  await exited;
  t.true(
    await until(async () => (await startTime(world.sleeper)) !== sleeperStart, 10_000),
    'the process started in the World was stopped',
  );
  t.true(
    await until(async () => (await startTime(world.holder)) === undefined, 10_000),
    'the holder of the namespaces exited',
  );
  t.true(await until(() => Promise.resolve(!existsSync(world.dir)), 10_000), `${world.dir} was removed`);
});

test('a World whose holder cannot start (a file to replace that does not exist) fails and leaves no directory', async (t) => {
  const err = await t.throwsAsync(World.create({ files: { '/nonexistent-mmd-test/conf': 'x' } }), {
    message: /world holder/,
  });
  const dir = /its directory (\S+) removed/.exec(err?.message ?? '')?.[1];
  t.truthy(dir, err?.message);
  t.false(existsSync(dir ?? ''), `${dir ?? ''} is gone`);
});

// serial: it changes NODE_OPTIONS for the double it starts, and counts this process's dbus-daemons
test.serial('a FakeMachined that cannot start leaves no dbus-daemon and no double behind', async (t) => {
  const before = await children('dbus-daemon');
  const saved = process.env.NODE_OPTIONS;
  process.env.NODE_OPTIONS = '--cpu-prof'; // refused in NODE_OPTIONS: the double's node exits at once
  try {
    await t.throwsAsync(FakeMachinedHandle.start(), { message: /fake machined did not start/ });
  } finally {
    if (saved === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = saved;
  }
  t.deepEqual(await children('dbus-daemon'), before);
  t.deepEqual(await children('node'), []);
});
