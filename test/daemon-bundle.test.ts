/**
 * bin/mymachinesd runs the daemon from one bundled module, dist/mymachinesd.mjs (scripts/bundle.mjs),
 * with zod, dbus-next and dns-packet inside: Node's loaders resolved, read and compiled some 200
 * files one by one before, about 70 ms more of every start-up (BENCHMARKS.md, 2026-12-06).
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { DAEMON_NODE_FLAGS } from '../src/daemon/heap.js';
import { BIN } from './support/daemon.js';

const run = promisify(execFile);
const HOOKS = new URL('./support/resolve-log.js', import.meta.url).href;

/** Every URL the ES module loader resolved while `node bin/mymachinesd ARGS` ran. */
async function resolvedBy(args: string[]): Promise<{ urls: string[]; stdout: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'mmd-bundle-'));
  try {
    const log = join(dir, 'resolved.txt');
    const register = `import { register } from 'node:module'; register(${JSON.stringify(HOOKS)});`;
    const { stdout } = await run(
      process.execPath,
      [
        ...DAEMON_NODE_FLAGS,
        '--import',
        `data:text/javascript,${encodeURIComponent(register)}`,
        BIN,
        ...args,
      ],
      { env: { ...process.env, RESOLVE_LOG: log } },
    );
    const urls = (await readFile(log, 'utf8').catch(() => '')).split('\n').filter((u) => u !== '');
    return { urls, stdout };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('bin/mymachinesd loads dist/mymachinesd.mjs and no other module of ours or of its dependencies', async (t) => {
  const { urls, stdout } = await resolvedBy(['--version']);
  t.regex(stdout, /^mymachinesd \d+\.\d+\.\d+/);
  const bundle = pathToFileURL(join(BIN, '..', '..', 'dist', 'mymachinesd.mjs')).href;
  t.true(urls.includes(bundle), urls.join('\n'));
  // node: built-ins aside, the bundle is the only module loaded after the entry itself
  const files = urls.filter((u) => u.startsWith('file:'));
  t.deepEqual(files, [pathToFileURL(BIN).href, bundle]);
});

test('the bundle carries a source map back to the TypeScript sources', async (t) => {
  const bundle = join(BIN, '..', '..', 'dist', 'mymachinesd.mjs');
  const text = await readFile(bundle, 'utf8');
  t.regex(text, /\/\/# sourceMappingURL=mymachinesd\.mjs\.map\n?$/);
  const map = JSON.parse(await readFile(`${bundle}.map`, 'utf8')) as { sources: string[] };
  t.true(map.sources.includes('../src/daemon/main.ts'));
  t.true(map.sources.includes('../src/registry-client/sync.ts'));
});

test("the bundle carries zod's English locale alone, and zod's English messages", async (t) => {
  const bundle = join(BIN, '..', '..', 'dist', 'mymachinesd.mjs');
  const map = JSON.parse(await readFile(`${bundle}.map`, 'utf8')) as { sources: string[] };
  const locales = map.sources.filter((s) => s.includes('/zod/v4/locales/'));
  // zod ships some 40 locales; all of them came with `z.locales` before (a quarter of the bundle)
  t.deepEqual(locales, ['../node_modules/zod/v4/locales/en.js']);
  t.true(map.sources.includes('zod-locales:english-only'));
  const text = await readFile(bundle, 'utf8');
  t.true(text.includes('Invalid input: expected '), "zod's English messages are in");
});
