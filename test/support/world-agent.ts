/**
 * A network client that runs INSIDE a World (its network and mount namespaces), so that tests can
 * reach a daemon's DNS stub on the World's addresses and its sockets under the World's /run. The
 * test drives it over stdin/stdout, one JSON command per line and one JSON result per line (with the
 * command's id); latencies are measured here, next to the sockets, so the pipe to the test does not
 * count. Handle: test/support/agent.ts.
 *
 * usage: node world-agent.js   (or `ip netns exec NS node world-agent.js` for another namespace)
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import * as dnsPacket from 'dns-packet';
import { z } from 'zod';
import { query, summarize, type QType } from './dns.js';

const dnsTarget = { server: z.string(), port: z.number().int() };

const Command = z.discriminatedUnion('op', [
  /** One query; the answer summarised (dns-packet's reading), or why there was none. */
  z.object({
    op: z.literal('dns'),
    id: z.number(),
    ...dnsTarget,
    name: z.string(),
    qtype: z.string(),
    transport: z.enum(['udp', 'tcp']),
    timeoutMs: z.number(),
    /** Source address to send from (a client address in the World). */
    bind: z.string().optional(),
  }),
  /** Raw bytes as one datagram; the reply bytes, or null when none came within the timeout. */
  z.object({
    op: z.literal('udp'),
    id: z.number(),
    ...dnsTarget,
    hex: z.string(),
    timeoutMs: z.number(),
    bind: z.string().optional(),
  }),
  /**
   * Raw bytes over one TCP connection, in chunks with pauses between them; reports whether and when
   * the server closed the connection and the (length-framed) replies it sent, waiting at most waitMs.
   */
  z.object({
    op: z.literal('tcp'),
    id: z.number(),
    ...dnsTarget,
    chunks: z.array(z.object({ hex: z.string(), delayMs: z.number().optional() })),
    waitMs: z.number(),
    bind: z.string().optional(),
  }),
  /**
   * Opens `count` connections (TCP to a DNS stub, or a unix socket path) and keeps them; with
   * `dripHex`, each writes one more byte of it every `dripEveryMs` (a slow-drip client).
   */
  z.object({
    op: z.literal('hold'),
    id: z.number(),
    target: z.union([z.object(dnsTarget), z.object({ path: z.string() })]),
    count: z.number().int(),
    dripHex: z.string().optional(),
    dripEveryMs: z.number().optional(),
  }),
  /** Closes the connections of a `hold`, reporting how many the server had closed meanwhile. */
  z.object({ op: z.literal('release'), id: z.number(), hold: z.number() }),
  /** One Varlink call on a fresh connection; every reply (until one without `continues`). */
  z.object({
    op: z.literal('varlink'),
    id: z.number(),
    path: z.string(),
    call: z.record(z.string(), z.unknown()),
    timeoutMs: z.number(),
  }),
  /**
   * Open-loop UDP load: `qps` queries a second for `durationMs`, cycling through `queries`, over
   * `sockets` source ports; every reply is checked against its expected RCODE and answer count.
   */
  z.object({
    op: z.literal('load'),
    id: z.number(),
    ...dnsTarget,
    qps: z.number(),
    durationMs: z.number(),
    sockets: z.number().int(),
    timeoutMs: z.number(),
    queries: z.array(
      z.object({ name: z.string(), qtype: z.string(), rcode: z.number(), answers: z.number() }),
    ),
  }),
  /**
   * Concurrency: opens `count` TCP DNS connections and `count` Varlink connections, all at once and
   * all held open together; then each sends `rounds` queries (DNS) or calls (Varlink) one after the
   * other and checks every answer.
   */
  z.object({
    op: z.literal('clients'),
    id: z.number(),
    dns: z.object({
      ...dnsTarget,
      count: z.number().int(),
      rounds: z.number().int(),
      name: z.string(),
      qtype: z.string(),
      answers: z.number(),
    }),
    varlink: z.object({
      path: z.string(),
      count: z.number().int(),
      rounds: z.number().int(),
      call: z.record(z.string(), z.unknown()),
      /** A substring every reply must contain. */
      expect: z.string(),
    }),
    timeoutMs: z.number(),
  }),
  /**
   * An upstream DNS server (UDP and TCP on one address and port) answering every question with
   * 203.0.113.1 and counting what it was asked: the target of the stub's forwarding.
   */
  z.object({ op: z.literal('upstream'), id: z.number(), ...dnsTarget }),
  /** The questions the upstream has been asked so far. */
  z.object({ op: z.literal('upstream-seen'), id: z.number() }),
]);
type Command = z.infer<typeof Command>;

const now = (): number => performance.now();

function send(result: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function udpSocket(server: string): dgram.Socket {
  return dgram.createSocket(server.includes(':') ? 'udp6' : 'udp4');
}

/** Binds a UDP socket to a source address (port 0), or to nothing. */
function bindUdp(socket: dgram.Socket, bind: string | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ port: 0, ...(bind ? { address: bind } : {}) }, () => {
      socket.off('error', reject);
      resolve();
    });
  });
}

async function udpExchange(
  server: string,
  port: number,
  packet: Buffer,
  timeoutMs: number,
  bind: string | undefined,
): Promise<{ ms: number; reply: Buffer | undefined }> {
  const socket = udpSocket(server);
  await bindUdp(socket, bind);
  const started = now();
  return new Promise((resolve) => {
    const finish = (reply: Buffer | undefined): void => {
      clearTimeout(timer);
      socket.close();
      resolve({ ms: now() - started, reply });
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    socket.on('message', (msg: Buffer) => finish(msg));
    socket.on('error', () => finish(undefined));
    socket.send(packet, port, server);
  });
}

interface TcpOutcome {
  ms: number;
  closedByServer: boolean;
  replies: Buffer[];
  error: string | undefined;
}

/** Sends chunks with pauses; collects framed replies until the server closes or `waitMs` passes. */
function tcpExchange(
  server: string,
  port: number,
  chunks: readonly { bytes: Buffer; delayMs: number }[],
  waitMs: number,
  bind: string | undefined,
  enough: (replies: readonly Buffer[]) => boolean = () => false,
): Promise<TcpOutcome> {
  return new Promise((resolve) => {
    const started = now();
    const socket = net.connect({ host: server, port, ...(bind ? { localAddress: bind } : {}) });
    let pending = Buffer.alloc(0);
    const replies: Buffer[] = [];
    let error: string | undefined;
    let done = false;
    const timers: NodeJS.Timeout[] = [];
    const finish = (closedByServer: boolean): void => {
      if (done) return;
      done = true;
      for (const t of timers) clearTimeout(t);
      socket.destroy();
      resolve({ ms: now() - started, closedByServer, replies, error });
    };
    timers.push(setTimeout(() => finish(false), waitMs));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      error = err.code ?? err.message;
    });
    socket.on('close', () => finish(true));
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const length = pending.readUInt16BE(0);
        replies.push(pending.subarray(2, 2 + length));
        pending = pending.subarray(2 + length);
      }
      if (enough(replies)) finish(false);
    });
    socket.on('connect', () => {
      let at = 0;
      for (const chunk of chunks) {
        at += chunk.delayMs;
        timers.push(
          setTimeout(() => {
            if (!socket.destroyed) socket.write(chunk.bytes);
          }, at),
        );
      }
    });
  });
}

function framed(packet: Buffer): Buffer {
  const out = Buffer.alloc(packet.length + 2);
  out.writeUInt16BE(packet.length, 0);
  packet.copy(out, 2);
  return out;
}

async function dnsQuery(c: Extract<Command, { op: 'dns' }>): Promise<Record<string, unknown>> {
  const packet = query(c.name, c.qtype as QType, { id: Math.floor(Math.random() * 0xffff) });
  if (c.transport === 'udp') {
    const { ms, reply } = await udpExchange(c.server, c.port, packet, c.timeoutMs, c.bind);
    return reply ? { ms, ...summarize(reply) } : { ms, error: 'timeout' };
  }
  const out = await tcpExchange(
    c.server,
    c.port,
    [{ bytes: framed(packet), delayMs: 0 }],
    c.timeoutMs,
    c.bind,
    (r) => r.length > 0,
  );
  const reply = out.replies[0];
  if (reply) return { ms: out.ms, ...summarize(reply) };
  return { ms: out.ms, error: out.error ?? (out.closedByServer ? 'closed' : 'timeout') };
}

// ---- held connections ---------------------------------------------------------------------------

interface Hold {
  sockets: net.Socket[];
  closedByServer: number;
  timers: NodeJS.Timeout[];
  /** Set by `release`: closes from then on are ours, not the server's. */
  releasing: boolean;
}
const holds = new Map<number, Hold>();

async function hold(c: Extract<Command, { op: 'hold' }>): Promise<Record<string, unknown>> {
  const h: Hold = { sockets: [], closedByServer: 0, timers: [], releasing: false };
  holds.set(c.id, h);
  const drip = c.dripHex ? Buffer.from(c.dripHex, 'hex') : undefined;
  let failed = 0;
  await Promise.all(
    Array.from(
      { length: c.count },
      () =>
        new Promise<void>((resolve) => {
          const target = c.target;
          const socket =
            'path' in target
              ? net.connect(target.path)
              : net.connect({ host: target.server, port: target.port });
          socket.on('connect', () => {
            h.sockets.push(socket);
            resolve();
          });
          socket.on('error', () => {
            failed++;
            resolve();
          });
          socket.on('close', () => {
            if (!h.releasing) h.closedByServer++;
          });
          socket.on('data', () => undefined);
        }),
    ),
  );
  if (drip && c.dripEveryMs) {
    let offset = 0;
    const tick = (): void => {
      const byte = drip.subarray(offset % drip.length, (offset % drip.length) + 1);
      offset++;
      for (const s of h.sockets) if (!s.destroyed) s.write(byte);
      h.timers.push(setTimeout(tick, c.dripEveryMs));
    };
    tick();
  }
  return { opened: h.sockets.length, failed };
}

function release(c: Extract<Command, { op: 'release' }>): Record<string, unknown> {
  const h = holds.get(c.hold);
  if (!h) return { error: `no hold ${c.hold}` };
  holds.delete(c.hold);
  for (const t of h.timers) clearTimeout(t);
  const stillOpen = h.sockets.filter((s) => !s.destroyed).length;
  h.releasing = true;
  for (const s of h.sockets) s.destroy();
  return { stillOpen, closedByServer: h.closedByServer };
}

// ---- Varlink ----------------------------------------------------------------------------------

/** A Varlink connection reading NUL-terminated replies: `call` resolves with the replies of one call. */
class VarlinkConn {
  private buffer = Buffer.alloc(0);
  private replies: string[] = [];
  private waiter: (() => void) | undefined;
  private closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      for (let nul = this.buffer.indexOf(0); nul >= 0; nul = this.buffer.indexOf(0)) {
        this.replies.push(this.buffer.subarray(0, nul).toString());
        this.buffer = this.buffer.subarray(nul + 1);
      }
      this.waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    socket.on('error', () => undefined);
  }

  static open(path: string, timeoutMs: number): Promise<VarlinkConn> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error('connect timeout'));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(new VarlinkConn(socket));
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new Error(err.code ?? err.message));
      });
    });
  }

  async call(message: Record<string, unknown>, timeoutMs: number): Promise<string[]> {
    this.socket.write(`${JSON.stringify(message)}\0`);
    const out: string[] = [];
    const deadline = now() + timeoutMs;
    for (;;) {
      const reply = this.replies.shift();
      if (reply !== undefined) {
        out.push(reply);
        if (!reply.includes('"continues":true')) return out;
        continue;
      }
      if (this.closed) throw new Error('closed');
      const left = deadline - now();
      if (left <= 0) throw new Error('timeout');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = undefined;
          resolve();
        };
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

async function varlink(c: Extract<Command, { op: 'varlink' }>): Promise<Record<string, unknown>> {
  const started = now();
  let conn: VarlinkConn | undefined;
  try {
    conn = await VarlinkConn.open(c.path, c.timeoutMs);
    const replies = await conn.call(c.call, c.timeoutMs - (now() - started));
    return { ms: now() - started, replies: replies.map((r): unknown => JSON.parse(r)) };
  } catch (err) {
    return { ms: now() - started, error: err instanceof Error ? err.message : String(err) };
  } finally {
    conn?.close();
  }
}

// ---- load ---------------------------------------------------------------------------------------

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? 0;
}

async function load(c: Extract<Command, { op: 'load' }>): Promise<Record<string, unknown>> {
  const packets = c.queries.map((q) => query(q.name, q.qtype as QType, { id: 0 }));
  const sockets = await Promise.all(
    Array.from({ length: c.sockets }, async () => {
      const s = udpSocket(c.server);
      await bindUdp(s, undefined);
      return s;
    }),
  );
  // id → [send time, index of the query]; ids are unique per socket among outstanding queries
  const outstanding = sockets.map(() => new Map<number, [number, number]>());
  const latencies: number[] = [];
  let sent = 0;
  let received = 0;
  let wrong = 0;
  let lateOrUnknown = 0;
  const wrongExamples: string[] = [];
  sockets.forEach((s, si) => {
    s.on('message', (msg: Buffer) => {
      const id = msg.readUInt16BE(0);
      const entry = outstanding[si]?.get(id);
      if (!entry) {
        lateOrUnknown++;
        return;
      }
      outstanding[si]?.delete(id);
      received++;
      latencies.push(now() - entry[0]);
      const expected = c.queries[entry[1]];
      const rcode = msg.readUInt8(3) & 0x0f;
      const answers = msg.readUInt16BE(6);
      if (!expected || rcode !== expected.rcode || answers !== expected.answers) {
        wrong++;
        if (wrongExamples.length < 5)
          wrongExamples.push(
            `${expected?.name ?? '?'} ${expected?.qtype ?? '?'}: rcode ${rcode}, ${answers} answers`,
          );
      }
    });
  });
  const started = now();
  const nextId = sockets.map(() => 0);
  let lost = 0;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const elapsed = now() - started;
      const due = Math.min(Math.floor((elapsed * c.qps) / 1000), Math.floor((c.durationMs * c.qps) / 1000));
      for (; sent < due; sent++) {
        const si = sent % sockets.length;
        const qi = Math.floor(sent / sockets.length) % packets.length;
        const packet = packets[qi];
        const socket = sockets[si];
        const pending = outstanding[si];
        if (!packet || !socket || !pending) continue;
        const id = (nextId[si] = ((nextId[si] ?? 0) + 1) & 0xffff);
        if (pending.has(id)) lost++; // still unanswered after a whole turn of the id space
        packet.writeUInt16BE(id, 0);
        pending.set(id, [now(), qi]);
        socket.send(packet, c.port, c.server);
      }
      // expire what waited longer than the timeout: lost
      const cutoff = now() - c.timeoutMs;
      for (const pending of outstanding)
        for (const [id, [at]] of pending) {
          if (at >= cutoff) break; // insertion order is send order
          pending.delete(id);
          lost++;
        }
      if (elapsed >= c.durationMs + c.timeoutMs) resolve();
      else setTimeout(tick, 5);
    };
    tick();
  });
  for (const pending of outstanding) lost += pending.size;
  for (const s of sockets) s.close();
  latencies.sort((a, b) => a - b);
  return {
    sent,
    received,
    lost,
    wrong,
    lateOrUnknown,
    wrongExamples,
    seconds: c.durationMs / 1000,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    p999: percentile(latencies, 99.9),
    max: latencies.at(-1) ?? 0,
  };
}

// ---- many concurrent clients ---------------------------------------------------------------------

async function clients(c: Extract<Command, { op: 'clients' }>): Promise<Record<string, unknown>> {
  const started = now();
  const errors: string[] = [];
  const note = (e: string): void => {
    if (errors.length < 10) errors.push(e);
  };
  // Phase 1: open everything, so that all connections are open at the same time.
  const dnsConns = await Promise.all(
    Array.from(
      { length: c.dns.count },
      () =>
        new Promise<net.Socket | undefined>((resolve) => {
          const s = net.connect({ host: c.dns.server, port: c.dns.port });
          s.once('connect', () => resolve(s));
          s.once('error', (err: NodeJS.ErrnoException) => {
            note(`dns connect: ${err.code ?? err.message}`);
            resolve(undefined);
          });
        }),
    ),
  );
  const varlinkConns = await Promise.all(
    Array.from({ length: c.varlink.count }, () =>
      VarlinkConn.open(c.varlink.path, c.timeoutMs).catch((err: unknown) => {
        note(`varlink connect: ${String(err)}`);
        return undefined;
      }),
    ),
  );
  const openAtOnce = {
    dns: dnsConns.filter((s) => s && !s.destroyed).length,
    varlink: varlinkConns.filter((v) => v !== undefined).length,
  };
  // Phase 2: every connection works through its rounds, all concurrently.
  const packet = framed(query(c.dns.name, c.dns.qtype as QType, { id: 7 }));
  let dnsOk = 0;
  let varlinkOk = 0;
  const latencies: number[] = [];
  const dnsWork = dnsConns.map(async (socket) => {
    if (!socket) return;
    let pending = Buffer.alloc(0);
    let wake: (() => void) | undefined;
    let closed = false;
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      wake?.();
    });
    socket.on('close', () => {
      closed = true;
      wake?.();
    });
    socket.on('error', () => undefined);
    for (let r = 0; r < c.dns.rounds; r++) {
      const at = now();
      socket.write(packet);
      while (!(pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0))) {
        if (closed) {
          note('dns: connection closed by the server');
          return;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
      const length = pending.readUInt16BE(0);
      const reply = pending.subarray(2, 2 + length);
      pending = pending.subarray(2 + length);
      latencies.push(now() - at);
      if ((reply.readUInt8(3) & 0x0f) === 0 && reply.readUInt16BE(6) === c.dns.answers) dnsOk++;
      else note(`dns: rcode ${reply.readUInt8(3) & 0x0f}, ${reply.readUInt16BE(6)} answers`);
    }
    socket.destroy();
  });
  const varlinkWork = varlinkConns.map(async (conn) => {
    if (!conn) return;
    try {
      for (let r = 0; r < c.varlink.rounds; r++) {
        const at = now();
        const [reply] = await conn.call(c.varlink.call, c.timeoutMs);
        latencies.push(now() - at);
        if (reply?.includes(c.varlink.expect)) varlinkOk++;
        else note(`varlink: ${reply?.slice(0, 200) ?? 'no reply'}`);
      }
    } catch (err) {
      note(`varlink: ${String(err)}`);
    } finally {
      conn.close();
    }
  });
  await Promise.all([...dnsWork, ...varlinkWork]);
  latencies.sort((a, b) => a - b);
  return {
    openAtOnce,
    dnsOk,
    varlinkOk,
    errors,
    ms: now() - started,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    max: latencies.at(-1) ?? 0,
  };
}

// ---- upstream -------------------------------------------------------------------------------------

const upstreamSeen: string[] = [];

function upstreamAnswer(packet: Buffer): Buffer | undefined {
  let decoded: dnsPacket.DecodedPacket;
  try {
    decoded = dnsPacket.decode(packet);
  } catch {
    return undefined;
  }
  const question = decoded.questions?.[0];
  upstreamSeen.push(question?.name ?? '');
  return dnsPacket.encode({
    type: 'response',
    id: decoded.id ?? 0,
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: decoded.questions ?? [],
    answers: question ? [{ type: 'A', name: question.name, ttl: 60, data: '203.0.113.1' }] : [],
  });
}

async function upstream(c: Extract<Command, { op: 'upstream' }>): Promise<Record<string, unknown>> {
  const udp = udpSocket(c.server);
  udp.on('message', (msg: Buffer, peer: dgram.RemoteInfo) => {
    const reply = upstreamAnswer(msg);
    if (reply) udp.send(reply, peer.port, peer.address);
  });
  await new Promise<void>((resolve) => udp.bind({ address: c.server, port: c.port }, resolve));
  const tcp = net.createServer((socket) => {
    let pending = Buffer.alloc(0);
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const reply = upstreamAnswer(pending.subarray(2, 2 + pending.readUInt16BE(0)));
        pending = pending.subarray(2 + pending.readUInt16BE(0));
        if (reply) socket.write(framed(reply));
      }
    });
  });
  await new Promise<void>((resolve) => tcp.listen({ host: c.server, port: c.port }, resolve));
  return { listening: true };
}

// ---- dispatch -----------------------------------------------------------------------------------

async function run(c: Command): Promise<Record<string, unknown>> {
  switch (c.op) {
    case 'dns':
      return dnsQuery(c);
    case 'udp': {
      const { ms, reply } = await udpExchange(
        c.server,
        c.port,
        Buffer.from(c.hex, 'hex'),
        c.timeoutMs,
        c.bind,
      );
      return { ms, reply: reply ? reply.toString('hex') : null };
    }
    case 'tcp': {
      const out = await tcpExchange(
        c.server,
        c.port,
        c.chunks.map((ch) => ({ bytes: Buffer.from(ch.hex, 'hex'), delayMs: ch.delayMs ?? 0 })),
        c.waitMs,
        c.bind,
      );
      return { ...out, replies: out.replies.map((r) => r.toString('hex')) };
    }
    case 'hold':
      return hold(c);
    case 'release':
      return release(c);
    case 'varlink':
      return varlink(c);
    case 'load':
      return load(c);
    case 'clients':
      return clients(c);
    case 'upstream':
      return upstream(c);
    case 'upstream-seen':
      return { seen: [...upstreamSeen] };
  }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  let command: Command;
  try {
    command = Command.parse(JSON.parse(line));
  } catch (err) {
    send({ id: -1, error: `bad command: ${err instanceof Error ? err.message : String(err)}` });
    return;
  }
  run(command).then(
    (result) => send({ ...result, id: command.id }),
    (err: unknown) => send({ id: command.id, error: err instanceof Error ? err.message : String(err) }),
  );
});
process.stdin.on('end', () => process.exit(0));
send({ id: 0, ready: true });
