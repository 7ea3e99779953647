/**
 * A test process that dies without cleaning up (test/world.test.ts): it makes a World, starts a
 * long-running process in it, prints what it made as one JSON line, and then waits to be killed.
 */
import { World } from './world.js';

const world = await World.create({ hosts: '127.0.0.1 localhost\n' });
const sleeper = await world.spawn('sleep', ['600']);
process.stdout.write(
  `${JSON.stringify({ dir: world.dir, holder: world.holderPid, sleeper: sleeper.pid })}\n`,
);
setInterval(() => undefined, 60_000);
