/**
 * One DNS-over-TCP connection (RFC 7766): pipelined queries answered in order, an idle timeout, and
 * back-pressure in both directions, so a client that never reads cannot make us buffer without bound.
 *
 * Reading stops (socket.pause) while a write is waiting for 'drain' or while `maxPending` answers are
 * outstanding, and starts again when that clears; unread bytes stay in the kernel, whose window then
 * throttles the client. Answers leave in query order (RFC 7766 §6.2.1.1 permits reordering; we do
 * not, so simple clients that match by order work too).
 *
 * Idle rule: the connection is closed when no complete query has arrived for `idleTimeoutMs` and we
 * owe the client nothing. Partial bytes do not count as activity, so a client dripping one byte at a
 * time cannot hold a connection slot for ever; an undrained write does not either.
 *
 * `idle` and `lastQueryAt` let the server close the connection idle the longest when it is at its
 * connection limit (RFC 7766 §6.2.3), with the same notion of activity.
 */
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { streamShare, type TurnShare } from '../turn-share.js';
import { frame, FrameReader } from './framing.js';

/** What the server gives a transport: the answer now, nothing, or the forwarded answer later. */
export type QueryHandler = (query: Buffer) => Buffer | undefined | Promise<Buffer | undefined>;

export interface TcpLimits {
  readonly idleTimeoutMs: number;
  /** Largest query we accept; a larger length prefix closes the connection. */
  readonly maxQuery: number;
  /** Answers outstanding (forwarded, or waiting for an earlier one) before we stop reading. */
  readonly maxPending: number;
  /** The event loop's share for stream requests (default: the process's one). */
  readonly share?: TurnShare;
}

interface Slot {
  bytes: Buffer | undefined;
  done: boolean;
}

export class TcpConnection {
  private readonly reader: FrameReader;
  /** Answers not yet written, in query order. */
  private readonly queue: Slot[] = [];
  private waitingForDrain = false;
  /** Queries are waiting for a later turn of the event loop (TurnShare). */
  private deferred = false;
  /** The query read when the turn's share ran out, answered first in the next. */
  private heldQuery: Buffer | undefined;
  private readonly share: TurnShare;
  private peerEnded = false;
  private shuttingDown = false;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  /** performance.now() of the connection, or of its last complete query. */
  lastQueryAt = performance.now();

  constructor(
    private readonly socket: Socket,
    private readonly handle: QueryHandler,
    private readonly limits: TcpLimits,
    private readonly onClose: (connection: TcpConnection) => void,
    private readonly onError: (error: Error) => void,
  ) {
    this.reader = new FrameReader(limits.maxQuery);
    this.share = limits.share ?? streamShare;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.reader.push(chunk);
      if (!this.deferred) this.pump();
    });
    socket.on('drain', () => {
      this.waitingForDrain = false;
      if (!this.deferred) this.pump();
    });
    socket.on('end', () => {
      this.peerEnded = true;
      this.endIfIdle();
    });
    socket.on('error', (error) => {
      this.onError(error);
    });
    socket.on('close', () => {
      this.closed = true;
      clearTimeout(this.timer);
      this.onClose(this);
    });
    this.timer = setTimeout(() => {
      this.onIdle();
    }, limits.idleTimeoutMs);
  }

  /** Nothing owed and nothing being written: closing it loses no answer. */
  get idle(): boolean {
    return !this.closed && this.queue.length === 0 && !this.waitingForDrain && !this.deferred;
  }

  /** Closes at once (the server needs the slot, or is gone). */
  destroy(): void {
    this.socket.destroy();
  }

  /** Stop reading queries; answer what was asked, then close (server shutdown). */
  shutdown(): void {
    this.shuttingDown = true;
    this.endIfIdle();
  }

  /**
   * Answers every complete query while nothing blocks us and the turn's share lasts, in one corked
   * write batch; the rest in a later turn.
   */
  private pump(): void {
    if (this.closed) return;
    this.socket.cork();
    while (!this.shuttingDown && !this.waitingForDrain && this.queue.length < this.limits.maxPending) {
      const query = this.heldQuery ?? this.reader.next();
      this.heldQuery = undefined;
      if (query === 'incomplete') break;
      if (query === 'oversized') {
        this.socket.destroy();
        return;
      }
      if (!this.share.allows()) {
        this.heldQuery = query;
        this.deferred = true;
        this.share.later(() => {
          this.deferred = false;
          this.pump();
        });
        break;
      }
      this.timer.refresh();
      this.lastQueryAt = performance.now();
      this.accept(this.handle(query));
    }
    this.socket.uncork();
    // Unread bytes stay in the kernel while we are blocked (or shutting down, or waiting for our
    // turn): its window, not our memory, holds the client back.
    if (
      this.shuttingDown ||
      this.waitingForDrain ||
      this.deferred ||
      this.queue.length >= this.limits.maxPending
    )
      this.socket.pause();
    else this.socket.resume();
    this.endIfIdle();
  }

  private accept(result: Buffer | undefined | Promise<Buffer | undefined>): void {
    if (!(result instanceof Promise)) {
      if (this.queue.length === 0) this.write(result);
      else this.queue.push({ bytes: result, done: true });
      return;
    }
    const slot: Slot = { bytes: undefined, done: false };
    this.queue.push(slot);
    result.then(
      (bytes) => {
        this.settle(slot, bytes);
      },
      (error: unknown) => {
        this.onError(error instanceof Error ? error : new Error(String(error)));
        this.settle(slot, undefined);
      },
    );
  }

  private settle(slot: Slot, bytes: Buffer | undefined): void {
    slot.bytes = bytes;
    slot.done = true;
    if (this.closed) return;
    this.socket.cork();
    while (this.queue[0]?.done) this.write(this.queue.shift()?.bytes);
    this.socket.uncork();
    this.pump();
  }

  private write(bytes: Buffer | undefined): void {
    if (!bytes || this.closed) return;
    if (!this.socket.write(frame(bytes))) this.waitingForDrain = true;
  }

  /**
   * Closes our side once the client is done (or we are shutting down) and nothing is owed; while a
   * write waits for 'drain', the drain handler comes back here.
   */
  private endIfIdle(): void {
    if (this.closed || this.queue.length > 0 || this.deferred) return;
    if (this.peerEnded || (this.shuttingDown && !this.waitingForDrain)) this.socket.end();
  }

  private onIdle(): void {
    if (this.closed) return;
    if ((this.queue.length > 0 && !this.waitingForDrain) || this.deferred) {
      // Still waiting on an upstream for this client: that is not idleness (the forwarder's own
      // timeouts bound it).
      this.timer.refresh();
      return;
    }
    this.socket.destroy();
  }
}
