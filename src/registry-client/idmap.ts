/**
 * `/proc/<pid>/uid_map` and `gid_map`: parsing, and the two directions machined uses. Pure.
 *
 * Semantics from machined 252 (`machine_owns_uid_internal`, `machine_translate_uid_internal`,
 * reference §2.3): every line counts, any number of ranges; host→inner skips lines whose outer start
 * is 0 (that is "no private user namespace"), inner→host does not.
 */
import type { IdRange } from './view.js';

/** 65535 and 4294967295 are never valid ids (the 16-bit and 32-bit "nobody/invalid" markers). */
export function isValidUnixId(id: number): boolean {
  return Number.isInteger(id) && id >= 0 && id < 0xffffffff && id !== 0xffff;
}

export type IdMapParse =
  { readonly ok: true; readonly ranges: IdRange[] } | { readonly ok: false; readonly line: number };

/** Parses the map file text; an unparsable line is an error (machined: EIO), blank lines end nothing. */
export function parseIdMap(text: string): IdMapParse {
  const ranges: IdRange[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (line.trim() === '') continue;
    const m = /^\s*(\d{1,10})\s+(\d{1,10})\s+(\d{1,10})\s*$/.exec(line);
    if (!m) return { ok: false, line: i + 1 };
    const [inner, outer, count] = [Number(m[1]), Number(m[2]), Number(m[3])];
    if (inner > 0xffffffff || outer > 0xffffffff || count > 0xffffffff) return { ok: false, line: i + 1 };
    ranges.push({ inner, outer, count });
  }
  return { ok: true, ranges };
}

export type OwnsResult =
  | { readonly kind: 'owned'; readonly inner: number }
  | { readonly kind: 'not-owned' }
  /** The host id maps to an invalid inner id (65535): machined fails the whole lookup with EINVAL. */
  | { readonly kind: 'invalid-inner'; readonly inner: number };

/** Host id → inner id, as machined decides whether a container "owns" a host UID/GID. */
export function ownsId(ranges: readonly IdRange[], hostId: number): OwnsResult {
  for (const r of ranges) {
    if (r.outer === 0) continue; // identity-style line: no private user namespace
    if (hostId < r.outer || hostId - r.outer >= r.count) continue;
    const inner = hostId - r.outer + r.inner;
    return isValidUnixId(inner) ? { kind: 'owned', inner } : { kind: 'invalid-inner', inner };
  }
  return { kind: 'not-owned' };
}

export type TranslateResult =
  | { readonly kind: 'mapped'; readonly host: number }
  | { readonly kind: 'unmapped' }
  | { readonly kind: 'invalid-host'; readonly host: number };

/** Inner id → host id (name lookups). No outer-start-0 skip: an identity map translates 1000 to 1000. */
export function translateId(ranges: readonly IdRange[], innerId: number): TranslateResult {
  for (const r of ranges) {
    if (innerId < r.inner || innerId - r.inner >= r.count) continue;
    const host = innerId - r.inner + r.outer;
    return isValidUnixId(host) ? { kind: 'mapped', host } : { kind: 'invalid-host', host };
  }
  return { kind: 'unmapped' };
}
