#!/usr/bin/env node
// scripts/bundle.mjs - after `tsc`: the daemon's entry points as one ES module each, with their
// dependencies (zod, dbus-next, dns-packet) inside.
//
//   dist/mymachinesd.mjs                          what bin/mymachinesd runs (src/daemon/main.ts)
//   dist/bench/processes/scale-daemon.bundle.mjs  bench:scale's entry, started as the daemon is
//
// Why: Node's module loaders resolved, read and compiled some 200 files one by one (140 ES modules,
// dbus-next's CommonJS ones besides) before the daemon's first instruction: about 140 ms of its
// start-up (zod alone ~55 ms, mostly the loader), against about 70 ms from one file (spawn to the
// bus connected: 194-219 against 137-140 ms; BENCHMARKS.md, 2026-12-06). Start-up is what a
// socket-activated daemon's first query waits for, and part of the first sync at 10,000 machines.
//
// The bundler is esbuild-wasm, esbuild's WebAssembly build: the native esbuild package runs an
// install script and installs a platform binary, which the supply-chain rules refuse
// (test/supply-chain.test.ts). Bundling takes a few seconds instead of a tenth of one.
//
// dbus-next's optional native transports (usocket, abstract-socket) and its X11 session-bus lookup
// are `require`d inside try/catch and not installed: left out, they fail at run time as before.
// Modules written as CommonJS keep a real `require` (the banner) for Node's built-ins.
import { build } from 'esbuild-wasm';
import { fileURLToPath, URL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

const BUNDLES = [
  { entry: 'dist/src/daemon/main.js', out: 'dist/mymachinesd.mjs' },
  { entry: 'dist/bench/processes/scale-daemon.js', out: 'dist/bench/processes/scale-daemon.bundle.mjs' },
];

/**
 * zod's classic API exports every locale (`z.locales`, 40-odd languages, about a quarter of the
 * bundle) though only English is ever configured, by zod itself; nothing here reads `z.locales`.
 * Its locale index is replaced by one exporting English alone.
 */
const englishOnlyZodLocales = {
  name: 'english-only-zod-locales',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      /[/\\]node_modules[/\\]zod[/\\]/.test(args.importer)
        ? { path: 'english-only', namespace: 'zod-locales', pluginData: args.resolveDir }
        : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (args) => ({
      contents: "export { default as en } from '../locales/en.js';",
      resolveDir: args.pluginData,
      loader: 'js',
    }));
  },
};

for (const { entry, out } of BUNDLES) {
  await build({
    absWorkingDir: root,
    entryPoints: [entry],
    outfile: out,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: ['usocket', 'abstract-socket', 'x11'],
    banner: {
      js: "import { createRequire as __bundleRequire } from 'node:module';\nconst require = __bundleRequire(import.meta.url);",
    },
    sourcemap: 'linked',
    plugins: [englishOnlyZodLocales],
    logLevel: 'warning',
  });
}
