/**
 * Propagation probe, run inside the World of the benchmark (so it reaches the stub on the World's
 * loopback and machined's bus). For each registration it:
 *
 * 1. calls RegisterMachineWithNetwork on machined (the leaders come from the caller: real processes
 *    in their own user and network namespaces) and takes the time the call returns;
 * 2. (`late` only) waits the given delay, adds the routable address inside the leader's network
 *    namespace (`nsenter -t PID -n ip addr add`), and takes the time that command has exited;
 * 3. asks the stub `NAME.machine A` back to back, one query in flight, until the answer holds the
 *    machine's address;
 * 4. calls UnregisterMachine and asks again until NXDOMAIN, counting answers that still carried the
 *    address (stale answers);
 * and notes when a passive bus listener saw MachineNew and MachineRemoved: the earliest moment any
 * follower of machined can know (the anchor).
 *
 *   node propagation-probe.js OPTIONS_JSON   (ProbeOptions, ../harness/propagation.ts)
 *
 * Prints a JSON array of ProbeSample.
 */
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import * as dnsPacket from 'dns-packet';
import { BusConnection } from '../../src/registry-client/bus.js';
import {
  MACHINE1_SIGNAL_RULES,
  Machine1Client,
  parseMachine1Signal,
} from '../../src/registry-client/machine1.js';
import { ProbeOptions, type ProbeSample } from '../harness/propagation.js';

const now = (): number => performance.now();
const since = (t: number | undefined, from: number): number | null => (t === undefined ? null : t - from);

/** One UDP socket, one query in flight: send, wait for the reply with that ID (or 100 ms), repeat. */
class StubAsker {
  private readonly socket = dgram.createSocket('udp4');
  private id = 1;
  private waiting:
    { id: number; resolve: (reply: Buffer | undefined) => void; timer: NodeJS.Timeout } | undefined;

  constructor(
    private readonly host: string,
    private readonly port: number,
  ) {
    this.socket.on('message', (reply: Buffer) => {
      const w = this.waiting;
      if (!w || reply.readUInt16BE(0) !== w.id) return;
      clearTimeout(w.timer);
      this.waiting = undefined;
      w.resolve(reply);
    });
  }

  ask(name: string): Promise<Buffer | undefined> {
    this.id = (this.id % 0xffff) + 1;
    const id = this.id;
    const query = dnsPacket.encode({
      type: 'query',
      id,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: 'A', name }],
    });
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        resolve(undefined);
      }, 100);
      this.waiting = { id, timer, resolve };
      this.socket.send(query, this.port, this.host);
    });
  }

  close(): void {
    this.socket.close();
  }
}

const NXDOMAIN = 3;

function rcode(reply: Buffer | undefined): number | undefined {
  return reply === undefined ? undefined : (reply[3] ?? 0) & 0x0f;
}

function hasAddress(reply: Buffer | undefined, address: string): boolean {
  if (reply === undefined) return false;
  return (dnsPacket.decode(reply).answers ?? []).some((a) => a.type === 'A' && a.data === address);
}

function run(cmd: string, args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, (error, _stdout, stderr) => {
      if (error) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr}`));
      else resolve();
    });
  });
}

async function main(): Promise<void> {
  const o = ProbeOptions.parse(JSON.parse(process.argv[2] ?? '{}'));
  const conn = await BusConnection.open(o.bus);
  const listener = await BusConnection.open(o.bus, { directCalls: false }); // signals only
  const machine1 = new Machine1Client(conn);
  const signals = new Map<string, number>();
  listener.onSignal((s) => {
    const e = parseMachine1Signal(s);
    if (e) signals.set(`${e.kind} ${e.name}`, now());
  });
  await Promise.all(MACHINE1_SIGNAL_RULES.map((r) => listener.addMatch(r)));
  const stub = new StubAsker(o.dns.host, o.dns.port);
  const samples: ProbeSample[] = [];
  try {
    for (let i = 0; i < o.registrations; i++) {
      const leader = o.leaders[i % o.leaders.length];
      if (!leader) throw new Error('no leader');
      const name = `${o.namePrefix}${String(i + 1).padStart(3, '0')}`;
      const qname = `${name}.machine`;
      const netns = ['-t', String(leader.pid), '-n', 'ip', 'addr'];
      const cidr = `${leader.address}/${leader.prefix}`;

      const t0 = now();
      await machine1.registerMachineWithNetwork(
        name,
        Buffer.alloc(0),
        'bench',
        'container',
        leader.pid,
        '',
        leader.ifindexes,
      );
      const registered = now();
      let from = registered;
      let addressAddedMs = 0;
      if (o.scenario === 'late') {
        const delay = o.lateDelaysMs[i % Math.max(1, o.lateDelaysMs.length)] ?? 0;
        await new Promise((r) => setTimeout(r, Math.max(0, delay - (now() - registered))));
        await run('nsenter', [...netns, 'add', cidr, 'dev', leader.inner]);
        from = now();
        addressAddedMs = from - registered;
      }
      let answerPolls = 0;
      for (;;) {
        answerPolls++;
        if (hasAddress(await stub.ask(qname), leader.address)) break;
        if (now() - from > 60_000) throw new Error(`${qname}: no answer with ${leader.address} in 60 s`);
      }
      const answered = now();

      const t1 = now();
      await machine1.unregisterMachine(name);
      const unregistered = now();
      let staleAnswers = 0;
      let staleAfterSignal = 0;
      let staleAfterSignalMs = 0;
      for (;;) {
        const asked = now();
        const reply = await stub.ask(qname);
        if (rcode(reply) === NXDOMAIN) break;
        if (hasAddress(reply, leader.address)) {
          staleAnswers++;
          const removed = signals.get(`MachineRemoved ${name}`);
          if (removed !== undefined && removed < asked) {
            staleAfterSignal++;
            staleAfterSignalMs = Math.max(staleAfterSignalMs, asked - removed);
          }
        }
        if (now() - unregistered > 60_000) throw new Error(`${qname}: no NXDOMAIN in 60 s`);
      }
      const gone = now();
      if (o.scenario === 'late') await run('nsenter', [...netns, 'del', cidr, 'dev', leader.inner]);

      samples.push({
        name,
        registerCallMs: registered - t0,
        newSignalMs: since(signals.get(`MachineNew ${name}`), registered),
        firstAnswerMs: answered - from,
        addressAddedMs,
        answerPolls,
        unregisterCallMs: unregistered - t1,
        removedSignalMs: since(signals.get(`MachineRemoved ${name}`), unregistered),
        nxdomainMs: gone - unregistered,
        staleAnswers,
        staleAfterSignal,
        staleAfterSignalMs,
      });
    }
  } finally {
    stub.close();
    conn.close();
    listener.close();
  }
  process.stdout.write(`${JSON.stringify(samples)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `propagation-probe: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 1;
});
