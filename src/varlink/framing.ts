/**
 * NUL framing of Varlink messages (reference §4.1): every message is one JSON document followed by a
 * single NUL byte; messages may arrive split across reads or several in one read.
 *
 * A small explicit state machine so that it can be tested without sockets:
 *
 *   idle ──bytes without NUL──▶ partial ──NUL──▶ idle   (each NUL completes one message)
 *     └──────────── more than `maxMessageBytes` buffered ──────────▶ overflowed (terminal)
 */

/** systemd's VARLINK_BUFFER_MAX: 16 MiB, in v252 and main. */
export const VARLINK_BUFFER_MAX = 16 * 1024 * 1024;

export type FramerState = 'idle' | 'partial' | 'overflowed';

export type FramerOutput =
  | { readonly kind: 'messages'; readonly messages: readonly Buffer[] }
  /** The peer sent more than the limit without a NUL: the connection must be dropped. */
  | { readonly kind: 'overflow' };

const NO_MESSAGES: FramerOutput = { kind: 'messages', messages: [] };
const OVERFLOW: FramerOutput = { kind: 'overflow' };

export class NulFramer {
  private stateValue: FramerState = 'idle';
  /** Pieces of the incomplete message, joined once when its NUL arrives (no quadratic copying). */
  private pieces: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxMessageBytes: number = VARLINK_BUFFER_MAX) {}

  get state(): FramerState {
    return this.stateValue;
  }

  /** Bytes held for the message that has not seen its NUL yet. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  /** Feeds received bytes; returns the messages they complete (without their NUL). */
  push(chunk: Buffer): FramerOutput {
    if (this.stateValue === 'overflowed') return OVERFLOW;
    let messages: Buffer[] | undefined;
    let start = 0;
    for (;;) {
      const nul = chunk.indexOf(0, start);
      const end = nul === -1 ? chunk.length : nul;
      if (this.pendingBytes + (end - start) > this.maxMessageBytes) {
        this.overflow();
        return OVERFLOW;
      }
      if (nul === -1) {
        if (end > start) this.keep(chunk.subarray(start));
        return messages ? { kind: 'messages', messages } : NO_MESSAGES;
      }
      (messages ??= []).push(this.complete(chunk.subarray(start, nul)));
      start = nul + 1;
    }
  }

  private keep(piece: Buffer): void {
    this.pieces.push(piece);
    this.pendingBytes += piece.length;
    this.stateValue = 'partial';
  }

  private complete(tail: Buffer): Buffer {
    if (this.stateValue === 'idle') return tail;
    this.pieces.push(tail);
    const message = Buffer.concat(this.pieces, this.pendingBytes + tail.length);
    this.pieces = [];
    this.pendingBytes = 0;
    this.stateValue = 'idle';
    return message;
  }

  private overflow(): void {
    this.pieces = [];
    this.pendingBytes = 0;
    this.stateValue = 'overflowed';
  }
}
