/**
 * The node flags the daemon needs from the first instruction on (V8 sizes the young generation when
 * the process starts): bin/mymachinesd carries them on its `#!` line, and the harnesses that start
 * `process.execPath bin/mymachinesd` take them from the same list.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { DAEMON_NODE_FLAGS } from '../src/daemon/heap.js';
import { BIN } from './support/daemon.js';

const run = promisify(execFile);

test('bin/mymachinesd runs node with every DAEMON_NODE_FLAGS flag, through env -S', async (t) => {
  const [shebang] = (await readFile(BIN, 'utf8')).split('\n');
  t.is(shebang, `#!/usr/bin/env -S node ${DAEMON_NODE_FLAGS.join(' ')}`);
  t.true(DAEMON_NODE_FLAGS.includes('--max-semi-space-size=4'));
  // executed directly (not as `node bin/mymachinesd`): the kernel runs env, env runs node with the flags
  const { stdout } = await run(BIN, ['--help']);
  t.regex(stdout, /mymachinesd serve/);
});
