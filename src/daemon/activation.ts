/**
 * systemd socket activation (sd_listen_fds(3)): sockets passed as fds 3… with LISTEN_FDS,
 * LISTEN_PID and LISTEN_FDNAMES. Our names are `dns` (UDP or TCP, IPv4 or IPv6), `userdb` and
 * `control`. Node cannot ask a socket for its type, so each fd is looked up by inode in
 * /proc/self/net/{udp,udp6,tcp,tcp6,unix}, which also gives the address to log.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { formatAddress } from '../registry-client/address.js';

export const SD_LISTEN_FDS_START = 3;

export type SocketKind =
  | { readonly type: 'udp' | 'tcp'; readonly family: 4 | 6; readonly host: string; readonly port: number }
  | { readonly type: 'unix-stream' | 'unix-dgram'; readonly path: string }
  | { readonly type: 'unknown' };

export interface InheritedSocket {
  readonly fd: number;
  readonly name: string;
  readonly kind: SocketKind;
}

export class ActivationError extends Error {
  override readonly name = 'ActivationError';
}

/**
 * The passed sockets, or [] when not socket-activated. Like sd_listen_fds(…, unset_environment=1),
 * the variables are removed so that child processes do not inherit them.
 */
export function inheritedSockets(env: NodeJS.ProcessEnv = process.env, pid = process.pid): InheritedSocket[] {
  const count = env.LISTEN_FDS;
  const listenPid = env.LISTEN_PID;
  const names = env.LISTEN_FDNAMES;
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  if (count === undefined) return [];
  if (listenPid !== undefined && Number(listenPid) !== pid) return []; // meant for another process
  if (!/^\d+$/.test(count)) throw new ActivationError(`LISTEN_FDS="${count}" is not a number`);
  const n = Number(count);
  const nameList = names === undefined ? [] : names.split(':');
  if (names !== undefined && nameList.length !== n)
    throw new ActivationError(`LISTEN_FDNAMES has ${nameList.length} names for ${n} sockets`);
  const tables = readSocketTables();
  const result: InheritedSocket[] = [];
  for (let i = 0; i < n; i++) {
    const fd = SD_LISTEN_FDS_START + i;
    result.push({ fd, name: nameList[i] ?? 'unknown', kind: classify(fd, tables) });
  }
  return result;
}

type Tables = Map<string, SocketKind>;

function readSocketTables(): Tables {
  const tables: Tables = new Map();
  for (const [file, type, family] of [
    ['tcp', 'tcp', 4],
    ['tcp6', 'tcp', 6],
    ['udp', 'udp', 4],
    ['udp6', 'udp', 6],
  ] as const) {
    for (const line of readLines(`/proc/self/net/${file}`)) {
      const f = line.trim().split(/\s+/);
      const local = f[1];
      const inode = f[9];
      if (!local || !inode) continue;
      const [hexHost = '', hexPort = '0'] = local.split(':');
      tables.set(inode, { type, family, host: decodeProcAddress(hexHost), port: parseInt(hexPort, 16) });
    }
  }
  for (const line of readLines('/proc/self/net/unix')) {
    const f = line.trim().split(/\s+/);
    const type = f[4];
    const inode = f[6];
    if (!inode) continue;
    tables.set(inode, { type: type === '0002' ? 'unix-dgram' : 'unix-stream', path: f[7] ?? '' });
  }
  return tables;
}

function classify(fd: number, tables: Tables): SocketKind {
  let link: string;
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    throw new ActivationError(`LISTEN_FDS names fd ${fd}, but it is not open`);
  }
  const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
  if (!inode) throw new ActivationError(`fd ${fd} is not a socket (${link})`);
  return tables.get(inode) ?? { type: 'unknown' };
}

function readLines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(1);
  } catch {
    return [];
  }
}

/** /proc/net addresses are the in-memory bytes of s_addr / s6_addr32[] printed as host-order hex words. */
export function decodeProcAddress(hex: string): string {
  const words: Buffer[] = [];
  for (let i = 0; i < hex.length; i += 8) {
    const w = Buffer.alloc(4);
    w.writeUInt32LE(parseInt(hex.slice(i, i + 8), 16));
    words.push(w);
  }
  return formatAddress(Buffer.concat(words));
}
