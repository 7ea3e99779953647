/**
 * Supply chain: every dependency pinned to one exact version in package.json, the lock file agreeing
 * with it and giving a sha512 integrity for every package, node_modules being exactly the lock (what
 * `npm ci` installs), no package that runs code at install (install scripts, native builds that
 * download or compile binaries), and no locked version inside a known advisory's range. The
 * registry mirror here refuses `npm audit` (HTTP 405), so advisories come from a vendored table
 * (test/fixtures/npm-advisories.json, see docs/reliability.md).
 */
import test from 'ava';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';

const ROOT = join(import.meta.dirname, '..', '..');

const PackageJson = z.object({
  dependencies: z.record(z.string(), z.string()).default({}),
  devDependencies: z.record(z.string(), z.string()).default({}),
  optionalDependencies: z.record(z.string(), z.string()).default({}),
  peerDependencies: z.record(z.string(), z.string()).default({}),
  overrides: z.unknown().optional(),
  scripts: z.record(z.string(), z.string()).default({}),
  version: z.string().optional(),
});

const LockEntry = z
  .object({
    version: z.string().optional(),
    resolved: z.string().optional(),
    integrity: z.string().optional(),
    link: z.boolean().optional(),
    dev: z.boolean().optional(),
    hasInstallScript: z.boolean().optional(),
    dependencies: z.record(z.string(), z.string()).optional(),
    devDependencies: z.record(z.string(), z.string()).optional(),
  })
  .loose();
const Lock = z.object({ lockfileVersion: z.number(), packages: z.record(z.string(), LockEntry) });

const Advisories = z.object({
  checked: z.string(),
  advisories: z.array(
    z.object({ name: z.string(), id: z.string(), vulnerable: z.string(), note: z.string() }),
  ),
});

const readJson = (path: string): unknown => JSON.parse(readFileSync(path, 'utf8'));
const pkg = PackageJson.parse(readJson(join(ROOT, 'package.json')));
const lock = Lock.parse(readJson(join(ROOT, 'package-lock.json')));

// ---- the rules, as functions a test can also feed bad input ---------------------------------------

/** An exact version: `1.2.3` or `1.2.3-rc.1`. Ranges, tags, URLs, paths and git specs are not. */
const EXACT = /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/;

/** `name@spec` of every dependency that is not pinned to one exact version. */
function unpinned(deps: Readonly<Record<string, string>>): string[] {
  return Object.entries(deps)
    .filter(([, spec]) => !EXACT.test(spec))
    .map(([name, spec]) => `${name}@${spec}`);
}

/** The package name of a lock key (`node_modules/a/node_modules/@s/b` → `@s/b`). */
const nameOf = (key: string): string => key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);

type Version = readonly [number, number, number, boolean];

function parseVersion(text: string): Version {
  const m = /^(\d+)\.(\d+)\.(\d+)(-.+)?$/.exec(text);
  if (!m) throw new Error(`not a version: ${text}`);
  return [Number(m[1]), Number(m[2]), Number(m[3]), m[4] !== undefined];
}

/** Compares versions; a prerelease is below its release (semver §11). */
function compare(a: Version, b: Version): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return Number(a[i]) - Number(b[i]);
  return Number(b[3]) - Number(a[3]);
}

/** Whether `version` is in `range`: comparators `<X`, `<=X`, `>X`, `>=X`, `=X` joined by spaces (and), `||` (or). */
function inRange(version: string, range: string): boolean {
  const v = parseVersion(version);
  return range.split('||').some((alternative) =>
    alternative
      .trim()
      .split(/\s+/)
      .every((comparator) => {
        const m = /^(<=|>=|<|>|=)(.+)$/.exec(comparator);
        if (!m?.[1] || !m[2]) throw new Error(`bad comparator ${comparator} in ${range}`);
        const c = compare(v, parseVersion(m[2]));
        switch (m[1]) {
          case '<':
            return c < 0;
          case '<=':
            return c <= 0;
          case '>':
            return c > 0;
          case '>=':
            return c >= 0;
          default:
            return c === 0;
        }
      }),
  );
}

/** Lock entries (name@version) inside an advisory's range, with the advisory. */
function vulnerable(
  packages: Readonly<Record<string, { version?: string | undefined }>>,
  advisories: readonly { name: string; id: string; vulnerable: string }[],
): string[] {
  const hits: string[] = [];
  for (const [key, entry] of Object.entries(packages)) {
    if (key === '' || entry.version === undefined) continue;
    for (const a of advisories)
      if (a.name === nameOf(key) && inRange(entry.version, a.vulnerable))
        hits.push(`${a.name}@${entry.version}: ${a.id}`);
  }
  return hits;
}

/** Scripts npm runs when it installs a package from the registry (`prepare` is not among them). */
const INSTALL_SCRIPTS = ['preinstall', 'install', 'postinstall'] as const;

/** What would run at install: install scripts, and a binding.gyp (npm then runs `node-gyp rebuild`). */
function installTimeCode(dir: string): string[] {
  const found: string[] = [];
  const manifest = PackageJson.safeParse(readJson(join(dir, 'package.json')));
  const scripts = manifest.success ? manifest.data.scripts : {};
  for (const s of INSTALL_SCRIPTS) if (scripts[s]) found.push(`${s}: ${scripts[s]}`);
  if (existsSync(join(dir, 'binding.gyp'))) found.push('binding.gyp (node-gyp rebuild)');
  return found;
}

/** Package directories under node_modules, as lock keys (scopes and nested node_modules followed). */
function installedPackages(dir = join(ROOT, 'node_modules'), prefix = 'node_modules/'): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
    const names = entry.name.startsWith('@')
      ? readdirSync(join(dir, entry.name), { withFileTypes: true })
          .filter((e) => e.isDirectory())
          .map((e) => `${entry.name}/${e.name}`)
      : [entry.name];
    for (const name of names) {
      out.push(`${prefix}${name}`);
      const nested = join(dir, name, 'node_modules');
      if (existsSync(nested)) out.push(...installedPackages(nested, `${prefix}${name}/node_modules/`));
    }
  }
  return out;
}

// ---- the rules can fail ------------------------------------------------------------------------------

test('the pin rule rejects ranges, tags, URLs and paths, and accepts exact versions', (t) => {
  t.deepEqual(
    unpinned({
      a: '^1.2.3',
      b: '~1.2.3',
      c: '>=1.0.0',
      d: '1.x',
      e: '*',
      f: 'latest',
      g: 'github:user/repo',
      h: 'file:../h',
      i: '1.2',
      j: '1.2.3 || 2.0.0',
      ok: '1.2.3',
      pre: '4.0.0-beta.1',
    }),
    [
      'a@^1.2.3',
      'b@~1.2.3',
      'c@>=1.0.0',
      'd@1.x',
      'e@*',
      'f@latest',
      'g@github:user/repo',
      'h@file:../h',
      'i@1.2',
      'j@1.2.3 || 2.0.0',
    ],
  );
});

test('the advisory rule finds a version inside a range and none outside', (t) => {
  const table = [
    { name: 'xml2js', id: 'CVE-2023-0842', vulnerable: '<0.5.0' },
    { name: 'chalk', id: 'malware', vulnerable: '=5.6.1' },
    { name: 'glob', id: 'CVE-2025-64756', vulnerable: '>=10.2.0 <10.5.0 || >=11.0.0 <11.1.0' },
  ];
  t.deepEqual(
    vulnerable(
      {
        'node_modules/xml2js': { version: '0.4.23' },
        'node_modules/a/node_modules/chalk': { version: '5.6.1' },
        'node_modules/chalk': { version: '5.6.2' },
        'node_modules/glob': { version: '11.0.3' },
        'node_modules/b/node_modules/glob': { version: '10.5.0' },
        'node_modules/c/node_modules/glob': { version: '10.2.0-rc.1' },
      },
      table,
    ),
    ['xml2js@0.4.23: CVE-2023-0842', 'chalk@5.6.1: malware', 'glob@11.0.3: CVE-2025-64756'],
  );
  t.false(inRange('10.2.0-rc.1', '>=10.2.0 <10.5.0'), 'a prerelease is below its release');
});

// ---- the project ------------------------------------------------------------------------------

test('every dependency in package.json is pinned to one exact version, and nothing overrides the lock', (t) => {
  t.deepEqual(unpinned(pkg.dependencies), []);
  t.deepEqual(unpinned(pkg.devDependencies), []);
  t.deepEqual(unpinned(pkg.optionalDependencies), []);
  t.deepEqual(unpinned(pkg.peerDependencies), []);
  t.is(pkg.overrides, undefined);
});

test('package-lock.json is lockfile v3, pins what package.json pins, and has a sha512 integrity for every package', (t) => {
  t.true(lock.lockfileVersion >= 3);
  const root = lock.packages[''];
  t.deepEqual(root?.dependencies ?? {}, pkg.dependencies);
  t.deepEqual(root?.devDependencies ?? {}, pkg.devDependencies);
  const problems: string[] = [];
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (key === '') continue;
    if (entry.link) problems.push(`${key}: a link`);
    if (!entry.version || !EXACT.test(entry.version))
      problems.push(`${key}: version ${entry.version ?? '?'}`);
    if (!entry.integrity?.startsWith('sha512-'))
      problems.push(`${key}: integrity ${entry.integrity ?? 'missing'}`);
    if (entry.resolved !== undefined && !entry.resolved.startsWith('https://registry.npmjs.org/'))
      problems.push(`${key}: resolved from ${entry.resolved}`);
  }
  t.deepEqual(problems, []);
  const direct = Object.keys({ ...pkg.dependencies, ...pkg.devDependencies });
  for (const name of direct)
    t.is(
      lock.packages[`node_modules/${name}`]?.version,
      { ...pkg.dependencies, ...pkg.devDependencies }[name],
      name,
    );
  t.log(`${Object.keys(lock.packages).length - 1} locked packages, ${direct.length} direct`);
});

test('node_modules holds exactly the locked packages at the locked versions (what npm ci installs)', (t) => {
  const locked = Object.keys(lock.packages)
    .filter((k) => k !== '')
    .sort();
  t.deepEqual(installedPackages().sort(), locked);
  const wrong: string[] = [];
  for (const key of locked) {
    const installed = PackageJson.parse(readJson(join(ROOT, key, 'package.json'))).version;
    if (installed !== lock.packages[key]?.version)
      wrong.push(`${key}: ${installed ?? '?'} ≠ ${lock.packages[key]?.version ?? '?'}`);
  }
  t.deepEqual(wrong, []);
});

test('no installed package runs code at install time: no install scripts, no native builds', (t) => {
  const flagged = Object.entries(lock.packages)
    .filter(([key, entry]) => key !== '' && entry.hasInstallScript)
    .map(([key]) => key);
  t.deepEqual(flagged, [], 'hasInstallScript in the lock');
  const found = Object.keys(lock.packages)
    .filter((k) => k !== '')
    .flatMap((key) => installTimeCode(join(ROOT, key)).map((what) => `${key}: ${what}`));
  t.deepEqual(found, []);
  // our own package: `prepare` builds with tsc and esbuild-wasm from the lock; nothing is fetched
  t.deepEqual(
    INSTALL_SCRIPTS.filter((s) => pkg.scripts[s] !== undefined),
    [],
  );
});

test('no locked version is inside a known advisory or malicious-release range (vendored table: npm audit is refused here)', (t) => {
  const table = Advisories.parse(readJson(join(ROOT, 'test', 'fixtures', 'npm-advisories.json')));
  t.deepEqual(vulnerable(lock.packages, table.advisories), []);
  // every production dependency is in the table, so its absence from it is a decision, not an oversight
  const production = Object.entries(lock.packages)
    .filter(([key, entry]) => key !== '' && !entry.dev)
    .map(([key]) => nameOf(key));
  const covered = new Set(table.advisories.map((a) => a.name));
  t.log(
    `${table.advisories.length} advisories checked (table of ${table.checked}); production packages: ${[...new Set(production)].sort().join(', ')}`,
  );
  t.deepEqual(pkg.dependencies ? Object.keys(pkg.dependencies).filter((name) => !covered.has(name)) : [], []);
});
