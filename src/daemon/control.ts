/**
 * What the control socket reports (`mymachinesd list` / `resolve`), pure over the view, and the
 * table rendering for people. Addresses are given the way a socket would use them: a link-local
 * IPv6 address carries its scope as `%<interface>` (getaddrinfo's text form), which DNS cannot do.
 */
import { z } from 'zod';
import type { MachineAddress, MachineRecord, RegistryView } from '../registry-client/view.js';

const controlAddressSchema = z.object({
  address: z.string(),
  family: z.union([z.literal(4), z.literal(6)]),
  /** What to connect to: `fe80::1%ve-web1` for a scoped link-local address, else the address. */
  socketAddress: z.string(),
  /** sin6_scope_id: the ifindex (0 = none), as nss-mymachines sets it. */
  scope: z.number(),
  interface: z.string().nullable(),
  linkLocal: z.boolean(),
});
export type ControlAddress = z.infer<typeof controlAddressSchema>;

const controlIdRangeSchema = z.object({ inner: z.number(), outer: z.number(), count: z.number() });
export type ControlIdRange = z.infer<typeof controlIdRangeSchema>;

/** One machine as the control socket reports it; the CLI parses replies with this same schema. */
export const controlMachineSchema = z.object({
  name: z.string(),
  class: z.string(),
  service: z.string(),
  state: z.string(),
  leader: z.number(),
  leaderAlive: z.boolean(),
  unit: z.string(),
  rootDirectory: z.string(),
  id: z.string(),
  interfaces: z.array(z.object({ ifindex: z.number(), name: z.string().nullable() })),
  addresses: z.array(controlAddressSchema),
  addressSource: z.string(),
  addressError: z.string().nullable(),
  uidRanges: z.array(controlIdRangeSchema).nullable(),
  gidRanges: z.array(controlIdRangeSchema).nullable(),
  /** Why this machine has no vu-/vg- names, or null when it has them. */
  userdbProblem: z.string().nullable(),
});
export type ControlMachine = z.infer<typeof controlMachineSchema>;

export function controlAddress(machine: MachineRecord, a: MachineAddress): ControlAddress {
  const ifname = machine.networkInterfaces.find((n) => n.ifindex === a.scope)?.name ?? null;
  // A zone only means something for link-local addresses; for others the kernel ignores it.
  const zone = a.linkLocal && a.family === 6 && a.scope !== 0 ? `%${ifname ?? String(a.scope)}` : '';
  return {
    address: a.address,
    family: a.family,
    socketAddress: a.address + zone,
    scope: a.scope,
    interface: ifname,
    linkLocal: a.linkLocal,
  };
}

export function controlMachine(
  m: MachineRecord,
  userdbProblem: (m: MachineRecord) => string | undefined,
): ControlMachine {
  return {
    name: m.name,
    class: m.class,
    service: m.service,
    state: m.state,
    leader: m.leader,
    leaderAlive: m.leaderAlive,
    unit: m.unit,
    rootDirectory: m.rootDirectory,
    id: m.id,
    interfaces: m.networkInterfaces.map((n) => ({ ifindex: n.ifindex, name: n.name ?? null })),
    addresses: m.addresses.map((a) => controlAddress(m, a)),
    addressSource: m.addressSource,
    addressError: m.addressError ?? null,
    uidRanges: m.uidMap ? m.uidMap.map((r) => ({ ...r })) : null,
    gidRanges: m.gidMap ? m.gidMap.map((r) => ({ ...r })) : null,
    userdbProblem: m.class === 'container' ? (userdbProblem(m) ?? null) : null,
  };
}

export type ResolveOutcome =
  | { readonly kind: 'found'; readonly machine: MachineRecord }
  | { readonly kind: 'unknown' }
  | { readonly kind: 'ambiguous'; readonly candidates: readonly string[] };

/**
 * A machine by name as a person types it: exact first; then without the `.<domain>` suffix; then
 * case-insensitively if that is unambiguous (two machines differing only in case: no guess).
 */
export function findMachine(view: RegistryView, name: string, domain: string): ResolveOutcome {
  const exact = view.byName(name);
  if (exact && exact.class !== 'host') return { kind: 'found', machine: exact };
  const suffix = `.${domain}`;
  const bare = name.toLowerCase().endsWith(suffix) ? name.slice(0, -suffix.length) : name;
  const stripped = bare !== name ? view.byName(bare) : undefined;
  if (stripped && stripped.class !== 'host') return { kind: 'found', machine: stripped };
  const folded = bare.toLowerCase();
  const candidates = view.all().filter((m) => m.class !== 'host' && m.name.toLowerCase() === folded);
  const [only, second] = candidates;
  if (only && !second) return { kind: 'found', machine: only };
  if (only) return { kind: 'ambiguous', candidates: candidates.map((m) => m.name) };
  return { kind: 'unknown' };
}

// ---- rendering for people -------------------------------------------------------------------------

function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows
    .map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  '))
    .join('\n');
}

function ranges(list: readonly ControlIdRange[] | null): string {
  if (!list || list.length === 0) return '-';
  const own = list.filter((r) => r.outer !== 0);
  if (own.length === 0) return 'host';
  return own.map((r) => `${r.outer}-${r.outer + r.count - 1}`).join(',');
}

export function renderList(machines: readonly ControlMachine[]): string {
  if (machines.length === 0) return 'No machines.\n';
  const rows: string[][] = [['MACHINE', 'CLASS', 'STATE', 'UIDS', 'GIDS', 'ADDRESSES']];
  for (const m of machines) {
    const addresses =
      m.addresses.length > 0
        ? m.addresses.map((a) => a.socketAddress).join(' ')
        : m.addressError
          ? `(${m.addressError})`
          : '-';
    const state = m.leaderAlive ? m.state : `${m.state}, leader gone`;
    rows.push([m.name, m.class, state, ranges(m.uidRanges), ranges(m.gidRanges), addresses]);
  }
  const notes = machines
    .filter((m) => m.userdbProblem)
    .map((m) => `note: ${m.name}: no vu-/vg- names: ${m.userdbProblem ?? ''}`);
  return `${table(rows)}\n\n${machines.length} machine(s).${notes.length > 0 ? `\n${notes.join('\n')}` : ''}\n`;
}

export function renderResolve(machine: ControlMachine): string {
  if (machine.addresses.length === 0)
    return `${machine.name}: no addresses${machine.addressError ? ` (${machine.addressError})` : ''}\n`;
  return machine.addresses.map((a) => `${a.socketAddress}\n`).join('');
}
