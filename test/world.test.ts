/**
 * The test harness keeps its promise when a test process dies without dispose(): every process it
 * started in a World is stopped (by PID and start time), and the World's directory is removed.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { startTime, World } from './support/world.js';

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
