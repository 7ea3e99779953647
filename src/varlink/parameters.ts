/**
 * Method parameters: a zod shape per method, checked the way systemd's `json_dispatch` checks a
 * dispatch table, so that an interface can reproduce systemd's error choice exactly.
 *
 * `json_dispatch` (v252) walks the object in wire order and stops at the first problem; then it
 * reports missing mandatory fields (reference §2.7). For each field, in this order (seen on the real
 * machined 252: `{"uid":1,"uid":"x"}` is a bad value, `{"uid":1,"uid":65535}` a repeated field):
 *   1. unknown key;
 *   2. wrong JSON type — here: any issue of the field's schema other than a refinement;
 *   3. key seen before;
 *   4. bad value (the dispatch callback) — here: the field schema's refinements (`custom` issues).
 * `dispatch` returns that first problem as a value; each interface decides how a problem is
 * answered (varlink.org's InvalidParameter by default, `io.systemd.System` errnos for the v252
 * UserDatabase).
 */
import { z } from 'zod';
import type { JsonEntry, JsonObject } from './json.js';

export type ParameterProblem =
  | { readonly kind: 'unknown-field'; readonly field: string }
  | { readonly kind: 'repeated-field'; readonly field: string }
  | { readonly kind: 'invalid-value'; readonly field: string }
  | { readonly kind: 'missing-field'; readonly field: string };

export type Dispatched<T> =
  { readonly ok: true; readonly value: T } | { readonly ok: false; readonly problem: ParameterProblem };

export interface ParameterSchema<T> {
  readonly fields: readonly string[];
  /** Validates parameters given both in wire order and as a plain object of the same entries. */
  dispatch(entries: readonly JsonEntry[], values: JsonObject): Dispatched<T>;
}

/** Declares a method's parameters: each field's schema decides type, value and optionality. */
export function parameters<S extends z.core.$ZodShape>(shape: S): ParameterSchema<z.output<z.ZodObject<S>>> {
  const object = z.object(shape);
  const fieldSchemas = new Map(Object.entries(shape));

  // The first problem in wire order: only run when the fast path below did not succeed.
  const firstProblem = (entries: readonly JsonEntry[]): ParameterProblem => {
    const seen = new Set<string>();
    for (const { key, node } of entries) {
      const schema = fieldSchemas.get(key);
      if (schema === undefined) return { kind: 'unknown-field', field: key };
      const parsed = z.safeParse(schema, node.value);
      const typeOk = parsed.success || parsed.error.issues.every((issue) => issue.code === 'custom');
      if (!typeOk) return { kind: 'invalid-value', field: key };
      if (seen.has(key)) return { kind: 'repeated-field', field: key };
      seen.add(key);
      if (!parsed.success) return { kind: 'invalid-value', field: key };
    }
    for (const [key, schema] of fieldSchemas) {
      if (!seen.has(key) && !z.safeParse(schema, undefined).success)
        return { kind: 'missing-field', field: key };
    }
    // Unreachable for plain shapes (the object fails only when a field fails); report it anyway.
    return { kind: 'invalid-value', field: '' };
  };

  return {
    fields: [...fieldSchemas.keys()],
    dispatch(entries, values) {
      // Fast path: no unknown or repeated key, and the whole object parses.
      if (knownAndUnique(entries, fieldSchemas)) {
        const parsed = object.safeParse(values);
        if (parsed.success) return { ok: true, value: parsed.data };
      }
      return { ok: false, problem: firstProblem(entries) };
    },
  };
}

function knownAndUnique(entries: readonly JsonEntry[], fields: ReadonlyMap<string, unknown>): boolean {
  for (let i = 0; i < entries.length; i++) {
    const key = entries[i]?.key ?? '';
    if (!fields.has(key)) return false;
    // Parameter objects have a handful of keys: a nested scan is cheaper than a Set.
    for (let j = 0; j < i; j++) if (entries[j]?.key === key) return false;
  }
  return true;
}
