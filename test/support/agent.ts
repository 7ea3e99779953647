/**
 * Test-side handle of a world-agent (test/support/world-agent.ts): a network client running inside
 * a World, or inside a network namespace created in it (`ip netns add` in the World), that sends
 * DNS queries, raw bytes and Varlink calls for the test and reports what came back and how long it
 * took.
 */
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { z } from 'zod';
import type { World } from './world.js';

const AGENT_JS = fileURLToPath(new URL('./world-agent.js', import.meta.url));

const Reply = z.object({ id: z.number() }).loose();

const DnsResult = z.union([
  z.object({
    ms: z.number(),
    rcode: z.number(),
    tc: z.boolean(),
    aa: z.boolean(),
    answers: z.array(z.string()),
    authority: z.array(z.string()),
  }),
  z.object({ ms: z.number(), error: z.string() }),
]);
export type DnsResult = z.infer<typeof DnsResult>;

const UdpResult = z.object({ ms: z.number(), reply: z.string().nullable() });
const TcpResult = z.object({
  ms: z.number(),
  closedByServer: z.boolean(),
  replies: z.array(z.string()),
  error: z.string().optional(),
});
export type TcpResult = z.infer<typeof TcpResult>;
const HoldResult = z.object({ opened: z.number(), failed: z.number() });
const ReleaseResult = z.object({ stillOpen: z.number(), closedByServer: z.number() });
const VarlinkResult = z.union([
  z.object({ ms: z.number(), replies: z.array(z.unknown()) }),
  z.object({ ms: z.number(), error: z.string() }),
]);
export type VarlinkResult = z.infer<typeof VarlinkResult>;
const LoadResult = z.object({
  sent: z.number(),
  received: z.number(),
  lost: z.number(),
  wrong: z.number(),
  lateOrUnknown: z.number(),
  wrongExamples: z.array(z.string()),
  seconds: z.number(),
  p50: z.number(),
  p99: z.number(),
  p999: z.number(),
  max: z.number(),
});
export type LoadResult = z.infer<typeof LoadResult>;
const ClientsResult = z.object({
  openAtOnce: z.object({ dns: z.number(), varlink: z.number() }),
  dnsOk: z.number(),
  varlinkOk: z.number(),
  errors: z.array(z.string()),
  ms: z.number(),
  p50: z.number(),
  p99: z.number(),
  max: z.number(),
});
export type ClientsResult = z.infer<typeof ClientsResult>;

export interface DnsTarget {
  readonly server: string;
  readonly port: number;
}

export interface LoadQuery {
  readonly name: string;
  readonly qtype: string;
  readonly rcode: number;
  readonly answers: number;
}

export class AgentHandle {
  private nextId = 1;
  private readonly waiting = new Map<number, (reply: unknown) => void>();
  private readonly stderr: string[] = [];
  private readonly ready: Promise<void>;

  private constructor(
    private readonly world: World,
    readonly child: ChildProcess,
  ) {
    if (!child.stdout || !child.stderr || !child.stdin) throw new Error('agent without stdio');
    let markReady: () => void = () => undefined;
    this.ready = new Promise((resolve) => (markReady = resolve));
    createInterface({ input: child.stdout }).on('line', (text) => {
      const reply = Reply.parse(JSON.parse(text));
      if (reply.id === 0) markReady();
      const waiter = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      waiter?.(reply);
    });
    child.stderr.on('data', (d: Buffer) => this.stderr.push(d.toString()));
    child.once('exit', (code) => {
      for (const [id, waiter] of this.waiting)
        waiter({ id, error: `agent exited (${code}): ${this.stderr.join('')}` });
      this.waiting.clear();
    });
  }

  /** Starts an agent in the World, or in network namespace `netns` (made with `ip netns add` there). */
  static async start(world: World, opts: { netns?: string } = {}): Promise<AgentHandle> {
    const argv = [process.execPath, AGENT_JS];
    const child = opts.netns
      ? await world.spawn('ip', ['netns', 'exec', opts.netns, ...argv], { stdin: 'pipe' })
      : await world.spawn(argv[0] ?? 'node', argv.slice(1), { stdin: 'pipe' });
    const agent = new AgentHandle(world, child);
    await Promise.race([
      agent.ready,
      new Promise((_, reject) =>
        child.once('exit', (code) => reject(new Error(`agent exited (${code}): ${agent.stderr.join('')}`))),
      ),
    ]);
    return agent;
  }

  private async request<T extends z.ZodType>(
    schema: T,
    command: Record<string, unknown>,
  ): Promise<z.infer<T>> {
    const id = this.nextId++;
    const reply = await new Promise<unknown>((resolve) => {
      this.waiting.set(id, resolve);
      this.child.stdin?.write(`${JSON.stringify({ ...command, id })}\n`);
    });
    const parsed = schema.safeParse(reply);
    if (!parsed.success)
      throw new Error(`agent: unexpected reply to ${String(command.op)}: ${JSON.stringify(reply)}`);
    return parsed.data;
  }

  dns(
    target: DnsTarget,
    name: string,
    qtype: string,
    opts: { transport?: 'udp' | 'tcp'; timeoutMs?: number; bind?: string } = {},
  ): Promise<DnsResult> {
    return this.request(DnsResult, {
      op: 'dns',
      ...target,
      name,
      qtype,
      transport: opts.transport ?? 'udp',
      timeoutMs: opts.timeoutMs ?? 2_000,
      ...(opts.bind ? { bind: opts.bind } : {}),
    });
  }

  /** One raw datagram; the reply bytes, or null when none came within the timeout. */
  async udp(target: DnsTarget, bytes: Buffer, timeoutMs = 1_000, bind?: string): Promise<Buffer | null> {
    const r = await this.request(UdpResult, {
      op: 'udp',
      ...target,
      hex: bytes.toString('hex'),
      timeoutMs,
      ...(bind ? { bind } : {}),
    });
    return r.reply === null ? null : Buffer.from(r.reply, 'hex');
  }

  tcp(
    target: DnsTarget,
    chunks: readonly { bytes: Buffer; delayMs?: number }[],
    waitMs: number,
    bind?: string,
  ): Promise<TcpResult> {
    return this.request(TcpResult, {
      op: 'tcp',
      ...target,
      chunks: chunks.map((c) => ({
        hex: c.bytes.toString('hex'),
        ...(c.delayMs ? { delayMs: c.delayMs } : {}),
      })),
      waitMs,
      ...(bind ? { bind } : {}),
    });
  }

  /** Opens and keeps `count` connections; `release(hold)` closes them. */
  async hold(
    target: DnsTarget | { path: string },
    count: number,
    drip?: { bytes: Buffer; everyMs: number },
  ): Promise<{ hold: number; opened: number; failed: number }> {
    const id = this.nextId;
    const r = await this.request(HoldResult, {
      op: 'hold',
      target,
      count,
      ...(drip ? { dripHex: drip.bytes.toString('hex'), dripEveryMs: drip.everyMs } : {}),
    });
    return { hold: id, ...r };
  }

  release(hold: number): Promise<{ stillOpen: number; closedByServer: number }> {
    return this.request(ReleaseResult, { op: 'release', hold });
  }

  varlink(path: string, call: Record<string, unknown>, timeoutMs = 5_000): Promise<VarlinkResult> {
    return this.request(VarlinkResult, { op: 'varlink', path, call, timeoutMs });
  }

  load(
    target: DnsTarget,
    opts: {
      qps: number;
      durationMs: number;
      sockets?: number;
      timeoutMs?: number;
      queries: readonly LoadQuery[];
    },
  ): Promise<LoadResult> {
    return this.request(LoadResult, {
      op: 'load',
      ...target,
      qps: opts.qps,
      durationMs: opts.durationMs,
      sockets: opts.sockets ?? 4,
      timeoutMs: opts.timeoutMs ?? 2_000,
      queries: opts.queries,
    });
  }

  clients(opts: {
    dns: DnsTarget & { count: number; rounds: number; name: string; qtype: string; answers: number };
    varlink: { path: string; count: number; rounds: number; call: Record<string, unknown>; expect: string };
    timeoutMs: number;
  }): Promise<ClientsResult> {
    return this.request(ClientsResult, { op: 'clients', ...opts });
  }

  /** Serves as an upstream DNS server on `target` (answers 203.0.113.1 to everything). */
  async upstream(target: DnsTarget): Promise<void> {
    await this.request(z.object({ listening: z.literal(true) }), { op: 'upstream', ...target });
  }

  /** The question names the upstream has been asked so far. */
  async upstreamSeen(): Promise<string[]> {
    return (await this.request(z.object({ seen: z.array(z.string()) }), { op: 'upstream-seen' })).seen;
  }

  async stop(): Promise<void> {
    this.child.stdin?.end();
    await this.world.stop(this.child);
  }
}
