/**
 * Module resolution hooks (module.register) that append every URL Node's ES module loader resolves,
 * one per line, to the file named by $RESOLVE_LOG. Registered in a child process through
 * `--import` (test/daemon-bundle.test.ts); the hooks run on the loader's own thread.
 */
import { appendFileSync } from 'node:fs';

interface Resolved {
  readonly url: string;
}
type NextResolve = (specifier: string, context: unknown) => Promise<Resolved>;

export async function resolve(specifier: string, context: unknown, next: NextResolve): Promise<Resolved> {
  const resolved = await next(specifier, context);
  const log = process.env.RESOLVE_LOG;
  if (log !== undefined) appendFileSync(log, `${resolved.url}\n`);
  return resolved;
}
