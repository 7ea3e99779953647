/**
 * Test helpers for Varlink over real unix sockets: a server on a socket in a fresh temp dir (closed
 * and removed by the test's teardown), and a raw peer that sends arbitrary bytes and reads
 * NUL-terminated replies with its own, independent framing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { memoryLogger } from '../../src/log.js';
import { VarlinkServer, type VarlinkServerOptions } from '../../src/varlink/server.js';

export function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'mymachinesd-test-'));
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

export interface RunningServer {
  readonly server: VarlinkServer;
  readonly path: string;
  readonly logger: ReturnType<typeof memoryLogger>;
}

export async function startServer(
  t: ExecutionContext,
  setup: (server: VarlinkServer) => void,
  options: Partial<VarlinkServerOptions> = {},
  socketName = 'io.systemd.Machine',
): Promise<RunningServer> {
  const logger = memoryLogger('debug');
  const server = new VarlinkServer({ logger, ...options });
  setup(server);
  const path = join(tempDir(t), socketName);
  await server.listen(path, { mode: 0o666 });
  t.teardown(() => server.close());
  return { server, path, logger };
}

/** A client that speaks raw bytes: for hostile input and exact wire checks. */
export class RawPeer {
  private buffer = Buffer.alloc(0);
  private readonly messages: string[] = [];
  private waiters: (() => void)[] = [];
  private endedFlag = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      for (let nul = this.buffer.indexOf(0); nul !== -1; nul = this.buffer.indexOf(0)) {
        this.messages.push(this.buffer.subarray(0, nul).toString('utf8'));
        this.buffer = this.buffer.subarray(nul + 1);
      }
      this.wake();
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.endedFlag = true;
        this.wake();
        resolve();
      });
    });
    socket.on('error', () => undefined); // ECONNRESET/EPIPE are outcomes the tests look at via `closed`
  }

  static connect(path: string): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(path);
      socket.once('connect', () => {
        resolve(new RawPeer(socket));
      });
      socket.once('error', reject);
    });
  }

  get ended(): boolean {
    return this.endedFlag;
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** The next complete message; rejects if the server closes before sending one. */
  async next(): Promise<string> {
    for (;;) {
      const message = this.messages.shift();
      if (message !== undefined) return message;
      if (this.endedFlag) throw new Error('connection closed before a reply');
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Waits until the server closes; returns every message (and partial bytes) not yet consumed. */
  async untilClosed(): Promise<{ messages: string[]; partial: string }> {
    await this.closed;
    return { messages: this.messages.splice(0), partial: this.buffer.toString('utf8') };
  }

  close(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

/** Yields to the event loop until `condition` holds (no timers: bounded by the test timeout). */
export async function eventually(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise<void>((resolve) => setImmediate(resolve));
}
