/**
 * A small Varlink client for the CLI and tests: connect to a socket path, call methods (pipelined,
 * answered in order), collect every reply of a `more` call. Replies are checked as strictly as
 * systemd's client checks them (reference §4.3): unknown keys, an error that continues, or
 * `continues` on a call without `more` are protocol errors and end the connection.
 */
import net from 'node:net';
import { NulFramer, VARLINK_BUFFER_MAX } from './framing.js';
import { readJson } from './json.js';
import { encodeCall, parseReply, type ReceivedReply, type ReplyParameters } from './protocol.js';

export type { ReceivedReply } from './protocol.js';

export type VarlinkClientErrorKind =
  /** The socket could not be reached (absent, refused, permission). */
  | 'connect'
  /** The connection ended before the answer was complete. */
  | 'closed'
  /** No complete answer within the timeout; the connection is closed. */
  | 'timeout'
  /** The peer sent something that is not a valid Varlink reply; the connection is closed. */
  | 'protocol';

export class VarlinkClientError extends Error {
  constructor(
    readonly kind: VarlinkClientErrorKind,
    message: string,
    options?: { readonly cause: unknown },
  ) {
    super(message, options);
    this.name = 'VarlinkClientError';
  }
}

export interface CallOptions {
  readonly more?: boolean;
  /** No reply is expected: `call` resolves with no replies once the call is written. */
  readonly oneway?: boolean;
  readonly timeoutMs?: number;
}

/** systemd's client default: VARLINK_DEFAULT_TIMEOUT_USEC, 45 s (reference §4.1). */
export const DEFAULT_CALL_TIMEOUT_MS = 45_000;

interface PendingCall {
  readonly method: string;
  readonly more: boolean;
  readonly replies: ReceivedReply[];
  readonly resolve: (replies: readonly ReceivedReply[]) => void;
  readonly reject: (err: VarlinkClientError) => void;
  readonly timer: NodeJS.Timeout;
}

export class VarlinkClient {
  private readonly framer = new NulFramer(VARLINK_BUFFER_MAX);
  private readonly pending: PendingCall[] = [];
  private failure: VarlinkClientError | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly path: string,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.receive(chunk);
    });
    socket.on('error', (err) => {
      this.fail(new VarlinkClientError('closed', `${path}: ${err.message}`, { cause: err }));
    });
    socket.on('close', () => {
      this.fail(new VarlinkClientError('closed', `${path}: connection closed by peer`));
    });
  }

  static connect(path: string, options: { readonly timeoutMs?: number } = {}): Promise<VarlinkClient> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new VarlinkClientError('connect', `${path}: connect timed out`));
      }, options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new VarlinkClient(socket, path));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new VarlinkClientError('connect', `${path}: ${err.message}`, { cause: err }));
      });
    });
  }

  /** Calls a method; resolves with all its replies (one, several for `more`, none for oneway). */
  call(
    method: string,
    parameters: ReplyParameters = {},
    options: CallOptions = {},
  ): Promise<readonly ReceivedReply[]> {
    if (this.failure) return Promise.reject(this.failure);
    const more = options.more === true;
    const oneway = options.oneway === true && !more;
    this.socket.write(encodeCall(method, parameters, { more, oneway }) + '\0');
    if (oneway) return Promise.resolve([]);
    const timeoutMs = options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const call: PendingCall = {
        method,
        more,
        replies: [],
        resolve,
        reject,
        timer: setTimeout(() => {
          this.timeOut(call, timeoutMs);
        }, timeoutMs),
      };
      this.pending.push(call);
    });
  }

  /** Closes the connection; calls still waiting fail with kind 'closed'. */
  close(): void {
    this.fail(new VarlinkClientError('closed', `${this.path}: connection closed by client`));
  }

  private receive(chunk: Buffer): void {
    const framed = this.framer.push(chunk);
    if (framed.kind === 'overflow') {
      this.fail(
        new VarlinkClientError('protocol', `${this.path}: reply larger than ${VARLINK_BUFFER_MAX} bytes`),
      );
      return;
    }
    for (const message of framed.messages) {
      if (this.failure) return;
      this.accept(message);
    }
  }

  private accept(message: Buffer): void {
    const read = readJson(message);
    const reply = read.ok ? parseReply(read.node) : undefined;
    const call = this.pending[0];
    const problem =
      reply === undefined
        ? 'not a valid reply object'
        : call === undefined
          ? 'a reply nobody asked for'
          : reply.continues && !call.more
            ? `'continues' on a call without 'more' (${call.method})`
            : undefined;
    if (problem !== undefined || reply === undefined || call === undefined) {
      this.fail(new VarlinkClientError('protocol', `${this.path}: ${problem ?? 'bad reply'}`));
      return;
    }
    call.replies.push(reply);
    if (reply.continues) return;
    this.pending.shift();
    clearTimeout(call.timer);
    call.resolve(call.replies);
  }

  /** Later replies would be matched to the wrong calls: the connection cannot be used any more. */
  private timeOut(call: PendingCall, timeoutMs: number): void {
    const index = this.pending.indexOf(call);
    if (index !== -1) this.pending.splice(index, 1);
    call.reject(
      new VarlinkClientError('timeout', `${this.path}: ${call.method}: no answer within ${timeoutMs} ms`),
    );
    this.fail(new VarlinkClientError('closed', `${this.path}: connection closed after a timeout`));
  }

  private fail(err: VarlinkClientError): void {
    if (!this.failure) this.failure = err;
    this.socket.destroy();
    for (const call of this.pending.splice(0)) {
      clearTimeout(call.timer);
      call.reject(err);
    }
  }
}
