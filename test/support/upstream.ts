/**
 * A tiny upstream DNS server on loopback (UDP and TCP, one port), built on dns-packet, for the
 * forwarding tests: no query of ours ever leaves the machine.
 */
import type { ExecutionContext } from 'ava';
import dgram from 'node:dgram';
import net from 'node:net';
import { once } from 'node:events';
import * as dnsPacket from 'dns-packet';

export type Behaviour =
  /** Answers every A question with 203.0.113.1. */
  | 'answer'
  /** Over UDP only a truncated, empty answer; over TCP 30 A records (about 1000 bytes: over 512, under 1232). */
  | 'truncate-udp'
  /** Never answers. */
  | 'silent'
  /** Sends a response with another ID first, then the real one. */
  | 'wrong-id-first'
  /** Holds every answer until `release()`. */
  | 'held';

export interface SeenQuery {
  transport: 'udp' | 'tcp';
  id: number;
  name: string;
  hasOpt: boolean;
  udpSize: number | undefined;
}

export interface Upstream {
  port: number;
  seen: SeenQuery[];
  /** Sends the held answers (behaviour `held`). */
  release(): void;
  /** Resolves at the next query received. */
  nextQuery(): Promise<SeenQuery>;
}

function respond(query: dnsPacket.DecodedPacket, count: number, truncated: boolean, id = query.id): Buffer {
  const question = query.questions?.[0];
  const name = question?.name ?? '';
  const answers: dnsPacket.Answer[] = truncated
    ? []
    : Array.from({ length: count }, (_, i) => ({
        type: 'A' as const,
        name,
        ttl: 60,
        data: `203.0.113.${i + 1}`,
      }));
  return dnsPacket.encode({
    type: 'response',
    id: id ?? 0,
    flags:
      dnsPacket.RECURSION_DESIRED |
      dnsPacket.RECURSION_AVAILABLE |
      (truncated ? dnsPacket.TRUNCATED_RESPONSE : 0),
    questions: query.questions ?? [],
    answers,
  });
}

export async function startUpstream(t: ExecutionContext, behaviour: Behaviour): Promise<Upstream> {
  const upstream = await listenUpstream(behaviour);
  t.teardown(() => upstream.close());
  return upstream;
}

/**
 * The same upstream without a test context (e.g. in a process of its own inside a World); `close()`
 * stops it. Listens on 127.0.0.1 and a free port unless told otherwise.
 */
export async function listenUpstream(
  behaviour: Behaviour,
  where: { address?: string; port?: number } = {},
): Promise<Upstream & { close(): Promise<void> }> {
  const address = where.address ?? '127.0.0.1';
  const seen: SeenQuery[] = [];
  const held: (() => void)[] = [];
  const waiters: ((q: SeenQuery) => void)[] = [];
  const note = (transport: 'udp' | 'tcp', packet: dnsPacket.DecodedPacket): void => {
    const opt = (packet.additionals ?? []).find((a): a is dnsPacket.OptAnswer => a.type === 'OPT');
    const q: SeenQuery = {
      transport,
      id: packet.id ?? -1,
      name: packet.questions?.[0]?.name ?? '',
      hasOpt: opt !== undefined,
      udpSize: opt?.udpPayloadSize,
    };
    seen.push(q);
    for (const wake of waiters.splice(0)) wake(q);
  };

  const udp = dgram.createSocket('udp4');
  udp.on('message', (message: Buffer, peer: dgram.RemoteInfo) => {
    const packet = dnsPacket.decode(message);
    note('udp', packet);
    const send = (bytes: Buffer): void => {
      udp.send(bytes, peer.port, peer.address);
    };
    switch (behaviour) {
      case 'answer':
        send(respond(packet, 1, false));
        break;
      case 'truncate-udp':
        send(respond(packet, 1, true));
        break;
      case 'silent':
        break;
      case 'wrong-id-first':
        send(respond(packet, 1, false, ((packet.id ?? 0) + 1) & 0xffff));
        send(respond(packet, 1, false));
        break;
      case 'held':
        held.push(() => {
          send(respond(packet, 1, false));
        });
        break;
    }
  });
  udp.bind(where.port ?? 0, address);
  await once(udp, 'listening');
  const port = udp.address().port;

  const tcp = net.createServer((socket) => {
    socket.on('error', () => undefined);
    let pending = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const message = pending.subarray(2, 2 + pending.readUInt16BE(0));
        pending = pending.subarray(2 + message.length);
        const packet = dnsPacket.decode(message);
        note('tcp', packet);
        if (behaviour === 'silent') continue;
        const body = respond(packet, behaviour === 'truncate-udp' ? 30 : 1, false);
        const head = Buffer.alloc(2);
        head.writeUInt16BE(body.length, 0);
        socket.write(Buffer.concat([head, body]));
      }
    });
  });
  tcp.listen(port, address);
  await once(tcp, 'listening');

  const close = async (): Promise<void> => {
    udp.close();
    await new Promise<void>((resolve) => {
      tcp.close(() => {
        resolve();
      });
    });
  };
  return {
    close,
    port,
    seen,
    release: () => {
      for (const send of held.splice(0)) send();
    },
    nextQuery: () =>
      new Promise((resolve) => {
        waiters.push(resolve);
      }),
  };
}

/** A loopback UDP port with nothing behind it (bound, then closed): ICMP port unreachable. */
export async function deadPort(): Promise<number> {
  const socket = dgram.createSocket('udp4');
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  const { port } = socket.address();
  await new Promise<void>((resolve) => {
    socket.close(() => {
      resolve();
    });
  });
  return port;
}
