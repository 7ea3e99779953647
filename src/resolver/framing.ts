/**
 * DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): every message is preceded by its length in
 * two bytes. A small explicit state machine — waiting for the length, then for the body — that is
 * fed chunks as the kernel hands them over (a prefix split across reads, many messages in one read)
 * and is pulled one frame at a time, so the connection decides when to stop reading (back-pressure).
 * It never buffers more than the frame it is assembling plus the chunks it was given.
 */

export type Frame = Buffer | 'incomplete' | 'oversized';

export class FrameReader {
  private state: 'length' | 'body' = 'length';
  /** Body length announced by the prefix, valid in state `body`. */
  private expected = 0;
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  private available = 0;

  constructor(private readonly maxFrame: number) {}

  /** Bytes received and not yet returned as a frame: non-zero means a frame is half-read. */
  get buffered(): number {
    return this.available;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
  }

  /**
   * The next complete frame; `incomplete` when more bytes are needed; `oversized` when the prefix
   * announces more than `maxFrame` (the connection should be closed: nothing after it can be trusted).
   */
  next(): Frame {
    if (this.state === 'length') {
      if (this.available < 2) return 'incomplete';
      const prefix = this.take(2);
      this.expected = prefix.readUInt16BE(0);
      if (this.expected > this.maxFrame) return 'oversized';
      this.state = 'body';
    }
    if (this.available < this.expected) return 'incomplete';
    this.state = 'length';
    return this.take(this.expected);
  }

  /** Removes `n` ≤ available bytes: a view into one chunk when they lie in one, else a copy. */
  private take(n: number): Buffer {
    this.available -= n;
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      if (!chunk) break;
      const count = Math.min(n - filled, chunk.length - this.head);
      chunk.copy(out, filled, this.head, this.head + count);
      filled += count;
      this.head += count;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return out;
  }
}

/** A message with its two-byte length prefix, in one buffer so it leaves in one write. */
export function frame(message: Buffer): Buffer {
  const out = Buffer.allocUnsafe(message.length + 2);
  out.writeUInt16BE(message.length, 0);
  message.copy(out, 2);
  return out;
}
