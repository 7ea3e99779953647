/**
 * The shipped systemd unit files (units/), read the way the tests need them: settings by section
 * and key, and the command line that reproduces what systemd does for the service with the real
 * `systemd-socket-activate` — so the tests start the daemon from the units' own addresses, names,
 * environment and ExecStart=, not from a copy of them.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const UNITS_DIR = fileURLToPath(new URL('../../../units', import.meta.url));
export const SERVICE_UNIT = 'mymachinesd.service';
export const SOCKET_UNITS = [
  'mymachinesd.socket',
  'mymachinesd-userdb.socket',
  'mymachinesd-control.socket',
] as const;

export class UnitFile {
  private constructor(
    readonly name: string,
    private readonly entries: readonly (readonly [section: string, key: string, value: string])[],
  ) {}

  static read(name: string): UnitFile {
    const entries: [string, string, string][] = [];
    let section = '';
    const lines = readFileSync(join(UNITS_DIR, name), 'utf8').split('\n');
    for (const [i, raw] of lines.entries()) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
      if (line.endsWith('\\')) throw new Error(`${name}:${i + 1}: continuation lines are not supported here`);
      const header = /^\[([^\]]+)\]$/.exec(line);
      if (header?.[1]) {
        section = header[1];
        continue;
      }
      const eq = line.indexOf('=');
      if (eq <= 0) throw new Error(`${name}:${i + 1}: not KEY=VALUE: ${line}`);
      entries.push([section, line.slice(0, eq).trim(), line.slice(eq + 1).trim()]);
    }
    return new UnitFile(name, entries);
  }

  /** Every value of a key, in order (empty when absent). */
  all(section: string, key: string): string[] {
    return this.entries.filter(([s, k]) => s === section && k === key).map(([, , v]) => v);
  }

  /** The one value of a key; throws when it is absent or given twice. */
  one(section: string, key: string): string {
    const values = this.all(section, key);
    const [value] = values;
    if (value === undefined || values.length > 1)
      throw new Error(`${this.name}: expected one ${key}= in [${section}], found ${values.length}`);
    return value;
  }
}

export interface ActivationOptions {
  /** Stands for the words of `$MYMACHINESD_OPTIONS` (/etc/default/mymachinesd). */
  readonly options?: readonly string[];
  /** Environment beyond the service's Environment= lines (e.g. DBUS_SYSTEM_BUS_ADDRESS). */
  readonly env?: Readonly<Record<string, string>>;
  /** Words run before ExecStart= (e.g. unitCapabilities()), after the activators. */
  readonly wrapper?: readonly string[];
}

/**
 * The part of the service's sandbox that holds without systemd: CapabilityBoundingSet= and
 * NoNewPrivileges=, applied with setpriv(1) to a root process as systemd applies them (its
 * effective set becomes the bounding set). The rest (ProtectSystem=, the seccomp filter, …) needs
 * systemd as PID 1.
 */
export function unitCapabilities(): string[] {
  const service = UnitFile.read(SERVICE_UNIT);
  const caps = service
    .one('Service', 'CapabilityBoundingSet')
    .split(/\s+/)
    .map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`);
  const nnp = service.one('Service', 'NoNewPrivileges') === 'yes' ? ['--no-new-privs'] : [];
  return ['setpriv', `--bounding-set=-all,${caps.join(',')}`, ...nnp, '--'];
}

/**
 * `systemd-socket-activate` command line(s) that pass the units' sockets to the service's ExecStart=
 * under the units' names. One invocation listens on stream sockets or on datagram sockets, not
 * both, and an inner invocation passes on what it received from an outer one: so the datagram
 * sockets are bound by an outer invocation that execs an inner one for the stream sockets, which
 * names all of them (LISTEN_FDNAMES is the inner's --fdname list: outer fds first). Like the real
 * tool, each waits for the first packet or connection before it execs what follows.
 */
export function socketActivation(opts: ActivationOptions = {}): { command: string; args: string[] } {
  const sockets = SOCKET_UNITS.map((name) => UnitFile.read(name));
  const datagram: [string, string][] = [];
  const stream: [string, string][] = [];
  for (const unit of sockets) {
    const fdName = unit.one('Socket', 'FileDescriptorName');
    for (const address of unit.all('Socket', 'ListenDatagram')) datagram.push([address, fdName]);
    for (const address of unit.all('Socket', 'ListenStream')) stream.push([address, fdName]);
  }
  const service = UnitFile.read(SERVICE_UNIT);
  const execStart = service
    .one('Service', 'ExecStart')
    .split(/\s+/)
    .flatMap((word) => (word === '$MYMACHINESD_OPTIONS' ? [...(opts.options ?? [])] : [word]));
  const env = [
    ...service.all('Service', 'Environment'),
    ...Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${v}`),
  ];
  const names = [...datagram, ...stream].map(([, name]) => name).join(':');
  const inner = [
    ...stream.flatMap(([address]) => ['--listen', address]),
    `--fdname=${names}`,
    ...env.flatMap((e) => ['--setenv', e]),
    ...(opts.wrapper ?? []),
    ...execStart,
  ];
  if (datagram.length === 0) return { command: 'systemd-socket-activate', args: inner };
  return {
    command: 'systemd-socket-activate',
    args: [
      '--datagram',
      ...datagram.flatMap(([address]) => ['--listen', address]),
      'systemd-socket-activate',
      ...inner,
    ],
  };
}
