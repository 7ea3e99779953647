/**
 * Forwarding of names that are not ours to upstream servers, for allowed clients only.
 *
 * Per query: a copy of the client's query with a fresh random ID (crypto; RFC 5452 §9.2) is sent
 * over UDP from a fresh socket (a fresh random source port), connected to the upstream so the kernel
 * drops datagrams from anyone else and reports an ICMP "port unreachable" at once. A response counts
 * only if its ID, opcode and question match (RFC 5452 §4.1); anything else is ignored until the
 * timeout. A truncated (TC) response is asked again over TCP on the same upstream (RFC 7766 §5).
 * On a timeout or an error the next upstream is tried, in the configured order; a response with any
 * RCODE is final (it is the upstream's answer, not a failure of the path). When every upstream has
 * failed the caller answers SERVFAIL.
 *
 * Forwarding is not the hot path: it allocates per query and keeps closures per exchange.
 */
import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import type { Upstream } from './config.js';
import { formatHostPort } from './config.js';
import { frame, FrameReader } from './framing.js';
import { EDNS_UDP_SIZE, Flag, HEADER_SIZE, lowerByte, parseQuery, QueryFields, TCP_MAX } from './wire.js';

export type ExchangeResult = Buffer | 'truncated' | 'failed';

/** A failed attempt, for the debug log. */
export interface ForwardAttempt {
  readonly upstream: string;
  readonly transport: 'udp' | 'tcp';
  readonly error: string;
}

export class Forwarder {
  constructor(
    private readonly upstreams: readonly Upstream[],
    private readonly timeoutMs: number,
    private readonly onAttemptFailed: (attempt: ForwardAttempt) => void,
  ) {}

  get upstreamList(): readonly Upstream[] {
    return this.upstreams;
  }

  /**
   * The upstream's response to `query` with the client's ID restored, or undefined when every
   * upstream failed (or the query is not one we would forward).
   */
  async forward(query: Buffer): Promise<Buffer | undefined> {
    const q = new QueryFields();
    if (parseQuery(query, q) !== 'ok') return undefined;
    const outgoing = Buffer.from(query);
    const id = randomInt(0, 0x10000);
    outgoing.writeUInt16BE(id, 0);
    // Never invite more than we advertise ourselves: larger UDP answers fragment (DNS Flag Day 2020).
    if (q.optOffset >= 0 && q.udpSize > EDNS_UDP_SIZE) outgoing.writeUInt16BE(EDNS_UDP_SIZE, q.optOffset + 3);
    const matches = (response: Buffer): boolean => responseMatches(response, id, outgoing, q);

    for (const upstream of this.upstreams) {
      let result = await udpExchange(upstream, outgoing, matches, this.timeoutMs);
      let transport: 'udp' | 'tcp' = 'udp';
      if (result === 'truncated') {
        transport = 'tcp';
        result = await tcpExchange(upstream, outgoing, matches, this.timeoutMs);
      }
      if (result instanceof Buffer) {
        result.writeUInt16BE(q.id, 0);
        return result;
      }
      this.onAttemptFailed({
        upstream: formatHostPort(upstream.address, upstream.port),
        transport,
        error: result === 'truncated' ? 'truncated over TCP' : 'no answer',
      });
    }
    return undefined;
  }
}

/** RFC 5452 §4.1: same ID, a response, same opcode, and the same question (name case-insensitively). */
export function responseMatches(response: Buffer, id: number, query: Buffer, q: QueryFields): boolean {
  if (response.length < q.questionEnd) return false;
  if (response.readUInt16BE(0) !== id) return false;
  const flags2 = response[2] ?? 0;
  if ((flags2 & Flag.QR) === 0 || (flags2 & 0x78) !== (q.flags2 & 0x78)) return false;
  if (response.readUInt16BE(4) !== 1) return false;
  for (let i = HEADER_SIZE; i < q.questionEnd; i++) {
    const a = response[i] ?? 0;
    const b = query[i] ?? 0;
    if (i < q.nameEnd ? lowerByte(a) !== lowerByte(b) : a !== b) return false;
  }
  return true;
}

function isTruncated(response: Buffer): boolean {
  return ((response[2] ?? 0) & Flag.TC) !== 0;
}

/** Node's dgram looks every send's address up; ours are literals already (perf-anchors "-fl"). */
export function literalLookup4(
  address: string,
  _options: unknown,
  callback: (error: null, address: string, family: number) => void,
): void {
  callback(null, address, 4);
}

export function literalLookup6(
  address: string,
  _options: unknown,
  callback: (error: null, address: string, family: number) => void,
): void {
  callback(null, address, 6);
}

function udpExchange(
  upstream: Upstream,
  packet: Buffer,
  matches: (response: Buffer) => boolean,
  timeoutMs: number,
): Promise<ExchangeResult> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket({
      type: upstream.family === 6 ? 'udp6' : 'udp4',
      lookup: upstream.family === 6 ? literalLookup6 : literalLookup4,
    });
    let settled = false;
    const finish = (result: ExchangeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.close();
      resolve(result);
    };
    const timer = setTimeout(() => {
      finish('failed');
    }, timeoutMs);
    socket.on('error', () => {
      finish('failed');
    });
    socket.on('message', (response: Buffer) => {
      if (!matches(response)) return; // a stray or spoofed datagram: keep waiting
      finish(isTruncated(response) ? 'truncated' : response);
    });
    socket.connect(upstream.port, upstream.address, () => {
      socket.send(packet, (error) => {
        if (error) finish('failed');
      });
    });
  });
}

function tcpExchange(
  upstream: Upstream,
  packet: Buffer,
  matches: (response: Buffer) => boolean,
  timeoutMs: number,
): Promise<ExchangeResult> {
  return new Promise((resolve) => {
    const reader = new FrameReader(TCP_MAX);
    const socket = net.connect({ host: upstream.address, port: upstream.port, family: upstream.family });
    let settled = false;
    const finish = (result: ExchangeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => {
      finish('failed');
    }, timeoutMs);
    socket.on('error', () => {
      finish('failed');
    });
    socket.on('close', () => {
      finish('failed');
    });
    socket.on('connect', () => {
      socket.write(frame(packet));
    });
    socket.on('data', (chunk: Buffer) => {
      reader.push(chunk);
      for (let response = reader.next(); response instanceof Buffer; response = reader.next()) {
        if (matches(response)) {
          finish(isTruncated(response) ? 'truncated' : response);
          return;
        }
      }
    });
  });
}
