/**
 * What a Varlink interface is to the server: its description text (IDL), a method table keyed by
 * full method name, and how parameter problems are answered. Handlers receive validated, typed
 * parameters only; they never see raw JSON.
 */
import type { JsonEntry, JsonObject } from './json.js';
import type { ParameterProblem, ParameterSchema } from './parameters.js';
import {
  VarlinkErrors,
  type ReplyParameters,
  type VarlinkErrorReply,
  type VarlinkReply,
} from './protocol.js';

export interface MethodContext {
  /** The full method name that was called. */
  readonly method: string;
  /** The call had `"more": true`: the handler may answer with a stream. */
  readonly more: boolean;
}

/**
 * Several replies to one `more` call: all but the last carry `continues: true`; when the stream is
 * empty, `whenEmpty` is sent instead (userdb: NoRecordFound, reference §4.4).
 */
export interface VarlinkStream {
  readonly stream: Iterable<ReplyParameters> | AsyncIterable<ReplyParameters>;
  readonly whenEmpty: VarlinkErrorReply;
}

export type MethodResult = VarlinkReply | VarlinkStream;

export function isStream(result: MethodResult): result is VarlinkStream {
  return 'stream' in result;
}

export type Invocation =
  | { readonly kind: 'parameter-problem'; readonly problem: ParameterProblem }
  | { readonly kind: 'result'; readonly result: MethodResult | Promise<MethodResult> };

/** A method with its parameter schema bound to its handler (the types stay inside). */
export interface VarlinkMethod {
  readonly parameterFields: readonly string[];
  invoke(entries: readonly JsonEntry[], values: JsonObject, context: MethodContext): Invocation;
}

export function method<T>(
  params: ParameterSchema<T>,
  handler: (params: T, context: MethodContext) => MethodResult | Promise<MethodResult>,
): VarlinkMethod {
  return {
    parameterFields: params.fields,
    invoke(entries, values, context) {
      const dispatched = params.dispatch(entries, values);
      if (!dispatched.ok) return { kind: 'parameter-problem', problem: dispatched.problem };
      return { kind: 'result', result: handler(dispatched.value, context) };
    },
  };
}

export interface VarlinkInterface {
  readonly name: string;
  /** The interface description (IDL) returned by GetInterfaceDescription. */
  readonly description: string;
  /** Full method name → method. Names must be declared in `description`. */
  readonly methods: Readonly<Record<string, VarlinkMethod>>;
  /** How parameter problems are answered; default: varlink.org's InvalidParameter. */
  readonly parameterError?: (problem: ParameterProblem) => VarlinkErrorReply;
}

/** varlink.org's answer to a bad parameter: InvalidParameter naming the field. */
export function invalidParameter(problem: ParameterProblem): VarlinkErrorReply {
  return { error: VarlinkErrors.InvalidParameter, parameters: { parameter: problem.field } };
}

export interface IdlMembers {
  readonly name: string;
  readonly methods: ReadonlySet<string>;
  readonly errors: ReadonlySet<string>;
}

/**
 * The interface name and the method and error names an IDL text declares. Only the member names
 * are read (enough to check a method table and error replies against the text); comments skipped.
 */
export function idlMembers(description: string): IdlMembers {
  let name = '';
  const methods = new Set<string>();
  const errors = new Set<string>();
  for (const raw of description.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#')) continue;
    const m = /^(interface|method|error)\s+([A-Za-z][A-Za-z0-9.-]*)/.exec(line);
    if (!m?.[2]) continue;
    if (m[1] === 'interface') name = m[2];
    else (m[1] === 'method' ? methods : errors).add(m[2]);
  }
  return { name, methods, errors };
}
