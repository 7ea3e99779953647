/**
 * Varlink call and reply objects: their schemas (the single source of truth for the runtime check
 * and the static type), the wire-order rules zod cannot see, and the encoding of replies.
 *
 * Server-side rules are those of systemd 252's `varlink_dispatch_method`, checked against the real
 * machined 252 (docs/userdb.md, "Wire rules"): only the keys `method`, `parameters`, `oneway` and
 * `more`; a repeated `method` or `parameters` is a violation; `oneway`/`more` must be booleans and
 * may not follow a `oneway` or `more` that was true. Every violation closes the connection without
 * a reply (reference §4.2).
 */
import { z } from 'zod';
import type { JsonEntry, JsonNode, JsonObject } from './json.js';

// ---- standard errors (varlink.org, reference §4.6) ---------------------------------------------

export const VarlinkErrors = {
  InterfaceNotFound: 'org.varlink.service.InterfaceNotFound',
  MethodNotFound: 'org.varlink.service.MethodNotFound',
  MethodNotImplemented: 'org.varlink.service.MethodNotImplemented',
  InvalidParameter: 'org.varlink.service.InvalidParameter',
  PermissionDenied: 'org.varlink.service.PermissionDenied',
  ExpectedMore: 'org.varlink.service.ExpectedMore',
} as const;

// ---- replies a handler produces -----------------------------------------------------------------

/** Reply parameters: our own data, serialized with JSON.stringify in insertion order. */
export type ReplyParameters = Readonly<Record<string, unknown>>;

export interface VarlinkErrorReply {
  readonly error: string;
  /** systemd 252 always sends an object, `{}` when there is nothing to say (reference §4.4). */
  readonly parameters: ReplyParameters;
}

/**
 * Reply parameters serialized already: the UTF-8 bytes of one JSON object, in pieces that are sent
 * one after the other as they are. For a reply too long to serialize, or even to turn into one
 * string and encode, without holding up everything else: the control socket's List of 10,000
 * machines is about 6 MB, built a slice per event-loop turn (one string of it took 16 ms to join
 * and 35 ms to encode on the project's VM).
 */
export class EncodedParameters {
  constructor(readonly parts: readonly Buffer[]) {}

  /** The JSON text (tests, and `encodeReply`: the server itself writes the parts). */
  text(): string {
    return Buffer.concat(this.parts).toString('utf8');
  }
}

/** The pieces of a reply whose parameters are encoded already, NUL included, to be written in order. */
export function encodedReplyParts(parameters: EncodedParameters, continues: boolean): (string | Buffer)[] {
  return ['{"parameters":', ...parameters.parts, continues ? `${CONTINUES}\0` : '}\0'];
}

export interface VarlinkSuccessReply {
  readonly parameters: ReplyParameters | EncodedParameters;
}

export type VarlinkReply = VarlinkSuccessReply | VarlinkErrorReply;

export function isErrorReply(reply: VarlinkReply): reply is VarlinkErrorReply {
  return 'error' in reply;
}

const CONTINUES = ',"continues":true}';

/** One reply as sent on the wire (without the NUL), in systemd 252's key order. */
export function encodeReply(reply: VarlinkReply, continues: boolean): string {
  const parameters =
    reply.parameters instanceof EncodedParameters
      ? reply.parameters.text()
      : JSON.stringify(reply.parameters);
  if (isErrorReply(reply)) return `{"error":${JSON.stringify(reply.error)},"parameters":${parameters}}`;
  return continues ? `{"parameters":${parameters}${CONTINUES}` : `{"parameters":${parameters}}`;
}

// ---- call objects (server side) -----------------------------------------------------------------

const callSchema = z.strictObject({
  method: z.string(),
  parameters: z.record(z.string(), z.unknown()).nullable().optional(),
  oneway: z.boolean().optional(),
  more: z.boolean().optional(),
});

export interface VarlinkCall {
  readonly method: string;
  /** The parameters' fields in wire order, duplicates included; empty for absent or null. */
  readonly parameters: readonly JsonEntry[];
  /** The same parameters as a plain object (for zod). */
  readonly parameterValues: JsonObject;
  readonly oneway: boolean;
  readonly more: boolean;
}

export type CallViolation =
  'not-an-object' | 'repeated-method-or-parameters' | 'flag-after-true-flag' | 'bad-call-object';

export type ParsedCall =
  | { readonly ok: true; readonly call: VarlinkCall }
  | { readonly ok: false; readonly violation: CallViolation };

const NO_PARAMETERS: readonly JsonEntry[] = [];

export function parseCall(node: JsonNode): ParsedCall {
  if (node.kind !== 'object') return { ok: false, violation: 'not-an-object' };
  // Wire-order rules first (zod only sees the last of duplicated keys).
  let seenMethod = false;
  let seenParameters = false;
  let flagSet = false;
  let parametersNode: JsonNode | undefined;
  for (const { key, node: value } of node.entries) {
    if (key === 'method' || key === 'parameters') {
      if (key === 'method' ? seenMethod : seenParameters)
        return { ok: false, violation: 'repeated-method-or-parameters' };
      if (key === 'method') seenMethod = true;
      else {
        seenParameters = true;
        parametersNode = value;
      }
    } else if (key === 'oneway' || key === 'more') {
      // systemd 252 ORs the flags as it goes and refuses either key once one of them was true:
      // `"oneway":false,"more":true` is a `more` call, `"more":true,"oneway":false` is a violation.
      if (flagSet) return { ok: false, violation: 'flag-after-true-flag' };
      if (value.value === true) flagSet = true;
    }
  }
  const parsed = callSchema.safeParse(node.value);
  if (!parsed.success) return { ok: false, violation: 'bad-call-object' };
  const entries = parametersNode?.kind === 'object' ? parametersNode.entries : NO_PARAMETERS;
  const values = parametersNode?.kind === 'object' ? parametersNode.value : {};
  return {
    ok: true,
    call: {
      method: parsed.data.method,
      parameters: entries,
      parameterValues: values,
      oneway: parsed.data.oneway === true,
      more: parsed.data.more === true,
    },
  };
}

/** A call as a client sends it (key order: method, parameters, then the flag that is set). */
export function encodeCall(
  method: string,
  parameters: ReplyParameters,
  flags: { readonly more?: boolean; readonly oneway?: boolean },
): string {
  const head = `{"method":${JSON.stringify(method)},"parameters":${JSON.stringify(parameters)}`;
  if (flags.more === true) return `${head},"more":true}`;
  if (flags.oneway === true) return `${head},"oneway":true}`;
  return `${head}}`;
}

// ---- reply objects (client side, reference §4.3) ------------------------------------------------

const replySchema = z
  .strictObject({
    // v252 always sends an object; newer servers may send null or leave it out.
    parameters: z.record(z.string(), z.unknown()).nullable().optional(),
    continues: z.boolean().optional(),
    error: z.string().optional(),
  })
  .refine((r) => !(r.error !== undefined && r.continues === true), { message: 'an error cannot continue' });

export interface ReceivedReply {
  readonly parameters: Readonly<Record<string, unknown>>;
  readonly error: string | undefined;
  readonly continues: boolean;
}

export function parseReply(node: JsonNode): ReceivedReply | undefined {
  if (node.kind !== 'object' || hasRepeatedKey(node.entries)) return undefined;
  const parsed = replySchema.safeParse(node.value);
  if (!parsed.success) return undefined;
  return {
    parameters: parsed.data.parameters ?? {},
    error: parsed.data.error,
    continues: parsed.data.continues === true,
  };
}

function hasRepeatedKey(entries: readonly JsonEntry[]): boolean {
  for (let i = 1; i < entries.length; i++) {
    const key = entries[i]?.key;
    for (let j = 0; j < i; j++) if (entries[j]?.key === key) return true;
  }
  return false;
}
