/**
 * `org.freedesktop.machine1`: typed wrappers for every method, property and signal of the Manager
 * and Machine interfaces (seed document 001, systemd 252), including the ones the daemon does not use.
 * Replies are parsed with zod, so a reply of the wrong shape is a `BadReply` error, never a wrong
 * value. D-Bus errors arrive as named `BusError`s (NoSuchMachine, NoPrivateNetworking, …).
 *
 * Methods returning file descriptors (`h`) cannot be used: the pinned dbus-next fork does not pass
 * unix fds. Their wrappers exist and fail with `NotSupported` without sending anything.
 */
import { Variant } from '@particle/dbus-next';
import { z } from 'zod';
import { BusError, matchRule, type BusConnection, type BusSignal, type CallSpec } from './bus.js';
import { decodePropertiesBody, PropertyValues } from './dbus-wire.js';

export const MACHINE1_NAME = 'org.freedesktop.machine1';
export const MACHINE1_PATH = '/org/freedesktop/machine1';
export const MANAGER_INTERFACE = 'org.freedesktop.machine1.Manager';
export const MACHINE_INTERFACE = 'org.freedesktop.machine1.Machine';
const PROPERTIES_INTERFACE = 'org.freedesktop.DBus.Properties';

// ---- wire types ---------------------------------------------------------------------------------

const str = z.string();
const u32 = z.number().int().min(0).max(0xffffffff);
const i32 = z.number().int();
const u64 = z.bigint();
const bytes = z.instanceof(Buffer);
const stringMap = z.array(z.tuple([str, str])).or(z.record(str, str));

const addressList = z.array(z.tuple([i32, bytes]));
const machineList = z.array(z.tuple([str, str, str, str]));
const imageList = z.array(z.tuple([str, str, z.boolean(), u64, u64, u64, str]));
// Reply schemas of the frequent calls, built once: building a zod schema costs more than using it.
const pathReply = z.tuple([str]);
const addressReply = z.tuple([addressList]);
const machineListReply = z.tuple([machineList]);
/**
 * Properties.GetAll's `a{sv}`, checked without copying it: a zod record of variants built a second
 * object per reply before the properties' own schema built a third (24 of the 514 MB the first
 * sync of 10,000 machines allocated; BENCHMARKS.md). Over the lean connection it arrives as
 * PropertyValues (no Variants at all; `decodePropertiesBody`).
 */
const propertiesReply = z.tuple([
  z.custom<Record<string, Variant> | PropertyValues>(
    (value) => value instanceof PropertyValues || isVariantRecord(value),
  ),
]);
const signalBody = z.tuple([str, str]);

/** One entry of `ListMachines`: (name, class, service, object path). */
export interface MachineListing {
  readonly name: string;
  readonly class: string;
  readonly service: string;
  readonly path: string;
}

export interface ImageListing {
  readonly name: string;
  readonly type: string;
  readonly readOnly: boolean;
  readonly creationTime: bigint;
  readonly modificationTime: bigint;
  readonly diskUsage: bigint;
  readonly path: string;
}

/** `(family, bytes)` as machined returns them: 2 = AF_INET (4 bytes), 10 = AF_INET6 (16 bytes). */
export interface RawAddress {
  readonly family: number;
  readonly bytes: Buffer;
}

export interface IdMapping {
  readonly machineName: string;
  readonly machinePath: string;
  readonly inner: number;
}

/** All properties of an `org.freedesktop.machine1.Machine` object (reference §5.3). */
export const machinePropertiesSchema = z.object({
  Name: str,
  Id: bytes,
  Timestamp: u64,
  TimestampMonotonic: u64,
  Service: str,
  Unit: str,
  Leader: u32,
  Class: str,
  RootDirectory: str,
  NetworkInterfaces: z.array(i32),
  State: str,
});
export type MachineProperties = z.infer<typeof machinePropertiesSchema>;

/**
 * The signature systemd gives each Machine property (src/machine/machine-dbus.c; checked against
 * machined 252 in test/registry-machined.test.ts). Each fixes the type the schema checks: `s` a
 * string, `u` an integer in 0…2^32-1, `t` a bigint, `ay` a Buffer, `ai` integers.
 */
export const MACHINE_PROPERTY_SIGNATURES = {
  Name: 's',
  Id: 'ay',
  Timestamp: 't',
  TimestampMonotonic: 't',
  Service: 's',
  Unit: 's',
  Leader: 'u',
  Class: 's',
  RootDirectory: 's',
  NetworkInterfaces: 'ai',
  State: 's',
} as const satisfies Record<keyof MachineProperties, string>;
const PROPERTY_SIGNATURES: readonly [string, string][] = Object.entries(MACHINE_PROPERTY_SIGNATURES);

/**
 * A Machine's properties straight from their values, when every one has the signature systemd
 * gives it: the schema would have nothing left to check. undefined when any is missing or of
 * another type: the schema decides then.
 */
function machinePropertiesBySignature(p: PropertyValues): MachineProperties | undefined {
  const s = p.signatures;
  const v = p.values;
  for (const [key, signature] of PROPERTY_SIGNATURES) if (s[key] !== signature) return undefined;
  return {
    Name: v.Name as string,
    Id: v.Id as Buffer,
    Timestamp: v.Timestamp as bigint,
    TimestampMonotonic: v.TimestampMonotonic as bigint,
    Service: v.Service as string,
    Unit: v.Unit as string,
    Leader: v.Leader as number,
    Class: v.Class as string,
    RootDirectory: v.RootDirectory as string,
    NetworkInterfaces: v.NetworkInterfaces as number[],
    State: v.State as string,
  };
}

export const managerPropertiesSchema = z.object({ PoolPath: str, PoolUsage: u64, PoolLimit: u64 });
export type ManagerProperties = z.infer<typeof managerPropertiesSchema>;

export type Machine1Signal =
  | { readonly kind: 'MachineNew'; readonly name: string; readonly path: string }
  | { readonly kind: 'MachineRemoved'; readonly name: string; readonly path: string };

/** Match rules for the Manager's signals; add them before the first ListMachines (no lost registration). */
export const MACHINE1_SIGNAL_RULES: readonly string[] = ['MachineNew', 'MachineRemoved'].map((member) =>
  matchRule({
    type: 'signal',
    sender: MACHINE1_NAME,
    path: MACHINE1_PATH,
    interface: MANAGER_INTERFACE,
    member,
  }),
);

/** Parses a Manager signal; undefined for anything else. */
export function parseMachine1Signal(signal: BusSignal): Machine1Signal | undefined {
  if (signal.path !== MACHINE1_PATH || signal.interface !== MANAGER_INTERFACE) return undefined;
  if (signal.member !== 'MachineNew' && signal.member !== 'MachineRemoved') return undefined;
  const body = signalBody.safeParse(signal.body);
  if (!body.success) return undefined;
  return { kind: signal.member, name: body.data[0], path: body.data[1] };
}

/**
 * machined's object path of a machine: bus-label escaping, every byte outside [A-Za-z0-9] as `_xx`
 * (reference §5.1: `my.ct` → `my_2ect`, `.host` → `_2ehost`).
 */
export function machineObjectPath(name: string): string {
  if (name === '') return `${MACHINE1_PATH}/machine/_`;
  let label = '';
  for (const byte of Buffer.from(name, 'utf8')) {
    const c = String.fromCharCode(byte);
    label += /[A-Za-z0-9]/.test(c) ? c : `_${byte.toString(16).padStart(2, '0')}`;
  }
  return `${MACHINE1_PATH}/machine/${label}`;
}

export interface Machine1CallOptions {
  /** Never bus-activate machined for this call (polls, refreshes). */
  readonly noAutoStart?: boolean;
  readonly timeoutMs?: number;
}

/** The Manager object plus per-machine objects, over one bus connection. */
export class Machine1Client {
  constructor(
    /** Only its `call` is used (tests hand in a stub). */
    private readonly bus: Pick<BusConnection, 'call'>,
    private readonly defaults: Machine1CallOptions = {},
  ) {}

  // ---- Manager: machines ----------------------------------------------------------------------

  async getMachine(name: string, opts?: Machine1CallOptions): Promise<string> {
    return (await this.manager('GetMachine', 's', [name], pathReply, opts))[0];
  }

  async getMachineByPID(pid: number, opts?: Machine1CallOptions): Promise<string> {
    return (await this.manager('GetMachineByPID', 'u', [pid], z.tuple([str]), opts))[0];
  }

  async listMachines(opts?: Machine1CallOptions): Promise<MachineListing[]> {
    const [list] = await this.manager('ListMachines', '', [], machineListReply, opts);
    return list.map(([name, cls, service, path]) => ({ name, class: cls, service, path }));
  }

  async createMachine(
    name: string,
    id: Buffer,
    service: string,
    cls: string,
    leader: number,
    rootDirectory: string,
    scopeProperties: readonly [string, Variant][],
  ): Promise<string> {
    const body = [name, id, service, cls, leader, rootDirectory, scopeProperties];
    return (await this.manager('CreateMachine', 'sayssusa(sv)', body, z.tuple([str])))[0];
  }

  async createMachineWithNetwork(
    name: string,
    id: Buffer,
    service: string,
    cls: string,
    leader: number,
    rootDirectory: string,
    ifindices: readonly number[],
    scopeProperties: readonly [string, Variant][],
  ): Promise<string> {
    const body = [name, id, service, cls, leader, rootDirectory, ifindices, scopeProperties];
    return (await this.manager('CreateMachineWithNetwork', 'sayssusaia(sv)', body, z.tuple([str])))[0];
  }

  async registerMachine(
    name: string,
    id: Buffer,
    service: string,
    cls: string,
    leader: number,
    rootDirectory: string,
  ): Promise<string> {
    const body = [name, id, service, cls, leader, rootDirectory];
    return (await this.manager('RegisterMachine', 'sayssus', body, z.tuple([str])))[0];
  }

  async registerMachineWithNetwork(
    name: string,
    id: Buffer,
    service: string,
    cls: string,
    leader: number,
    rootDirectory: string,
    ifindices: readonly number[],
  ): Promise<string> {
    const body = [name, id, service, cls, leader, rootDirectory, ifindices];
    return (await this.manager('RegisterMachineWithNetwork', 'sayssusai', body, z.tuple([str])))[0];
  }

  async unregisterMachine(name: string): Promise<void> {
    await this.manager('UnregisterMachine', 's', [name], z.tuple([]));
  }

  async terminateMachine(name: string): Promise<void> {
    await this.manager('TerminateMachine', 's', [name], z.tuple([]));
  }

  async killMachine(name: string, who: 'leader' | 'all', signal: number): Promise<void> {
    await this.manager('KillMachine', 'ssi', [name, who, signal], z.tuple([]));
  }

  async getMachineAddresses(name: string, opts?: Machine1CallOptions): Promise<RawAddress[]> {
    const [list] = await this.manager('GetMachineAddresses', 's', [name], addressReply, opts);
    return list.map(([family, b]) => ({ family, bytes: b }));
  }

  async getMachineOSRelease(name: string, opts?: Machine1CallOptions): Promise<Record<string, string>> {
    const [fields] = await this.manager('GetMachineOSRelease', 's', [name], z.tuple([stringMap]), opts);
    return toRecord(fields);
  }

  openMachinePTY(_name: string): Promise<never> {
    return fdUnsupported('OpenMachinePTY');
  }

  openMachineLogin(_name: string): Promise<never> {
    return fdUnsupported('OpenMachineLogin');
  }

  openMachineShell(
    _name: string,
    _user: string,
    _path: string,
    _args: readonly string[],
    _environment: readonly string[],
  ): Promise<never> {
    return fdUnsupported('OpenMachineShell');
  }

  async bindMountMachine(
    name: string,
    source: string,
    destination: string,
    readOnly: boolean,
    mkdir: boolean,
  ): Promise<void> {
    await this.manager(
      'BindMountMachine',
      'sssbb',
      [name, source, destination, readOnly, mkdir],
      z.tuple([]),
    );
  }

  async copyFromMachine(name: string, source: string, destination: string): Promise<void> {
    await this.manager('CopyFromMachine', 'sss', [name, source, destination], z.tuple([]));
  }

  async copyToMachine(name: string, source: string, destination: string): Promise<void> {
    await this.manager('CopyToMachine', 'sss', [name, source, destination], z.tuple([]));
  }

  openMachineRootDirectory(_name: string): Promise<never> {
    return fdUnsupported('OpenMachineRootDirectory');
  }

  async getMachineUIDShift(name: string, opts?: Machine1CallOptions): Promise<number> {
    return (await this.manager('GetMachineUIDShift', 's', [name], z.tuple([u32]), opts))[0];
  }

  async mapFromMachineUser(name: string, innerUid: number, opts?: Machine1CallOptions): Promise<number> {
    return (await this.manager('MapFromMachineUser', 'su', [name, innerUid], z.tuple([u32]), opts))[0];
  }

  async mapToMachineUser(outerUid: number, opts?: Machine1CallOptions): Promise<IdMapping> {
    const [machineName, machinePath, inner] = await this.manager(
      'MapToMachineUser',
      'u',
      [outerUid],
      z.tuple([str, str, u32]),
      opts,
    );
    return { machineName, machinePath, inner };
  }

  async mapFromMachineGroup(name: string, innerGid: number, opts?: Machine1CallOptions): Promise<number> {
    return (await this.manager('MapFromMachineGroup', 'su', [name, innerGid], z.tuple([u32]), opts))[0];
  }

  async mapToMachineGroup(outerGid: number, opts?: Machine1CallOptions): Promise<IdMapping> {
    const [machineName, machinePath, inner] = await this.manager(
      'MapToMachineGroup',
      'u',
      [outerGid],
      z.tuple([str, str, u32]),
      opts,
    );
    return { machineName, machinePath, inner };
  }

  // ---- Manager: images and pool -----------------------------------------------------------------

  async getImage(name: string): Promise<string> {
    return (await this.manager('GetImage', 's', [name], z.tuple([str])))[0];
  }

  async listImages(): Promise<ImageListing[]> {
    const [list] = await this.manager('ListImages', '', [], z.tuple([imageList]));
    return list.map(([name, type, readOnly, creationTime, modificationTime, diskUsage, path]) => ({
      name,
      type,
      readOnly,
      creationTime,
      modificationTime,
      diskUsage,
      path,
    }));
  }

  async removeImage(name: string): Promise<void> {
    await this.manager('RemoveImage', 's', [name], z.tuple([]));
  }

  async renameImage(name: string, newName: string): Promise<void> {
    await this.manager('RenameImage', 'ss', [name, newName], z.tuple([]));
  }

  async cloneImage(name: string, newName: string, readOnly: boolean): Promise<void> {
    await this.manager('CloneImage', 'ssb', [name, newName, readOnly], z.tuple([]));
  }

  async markImageReadOnly(name: string, readOnly: boolean): Promise<void> {
    await this.manager('MarkImageReadOnly', 'sb', [name, readOnly], z.tuple([]));
  }

  async getImageHostname(name: string): Promise<string> {
    return (await this.manager('GetImageHostname', 's', [name], z.tuple([str])))[0];
  }

  async getImageMachineID(name: string): Promise<Buffer> {
    return (await this.manager('GetImageMachineID', 's', [name], z.tuple([bytes])))[0];
  }

  async getImageMachineInfo(name: string): Promise<Record<string, string>> {
    return toRecord((await this.manager('GetImageMachineInfo', 's', [name], z.tuple([stringMap])))[0]);
  }

  async getImageOSRelease(name: string): Promise<Record<string, string>> {
    return toRecord((await this.manager('GetImageOSRelease', 's', [name], z.tuple([stringMap])))[0]);
  }

  async setPoolLimit(size: bigint): Promise<void> {
    await this.manager('SetPoolLimit', 't', [size], z.tuple([]));
  }

  async setImageLimit(name: string, size: bigint): Promise<void> {
    await this.manager('SetImageLimit', 'st', [name, size], z.tuple([]));
  }

  async cleanPool(mode: 'all' | 'hidden'): Promise<{ name: string; size: bigint }[]> {
    const [list] = await this.manager('CleanPool', 's', [mode], z.tuple([z.array(z.tuple([str, u64]))]));
    return list.map(([name, size]) => ({ name, size }));
  }

  async managerProperties(opts?: Machine1CallOptions): Promise<ManagerProperties> {
    return this.getAll(MACHINE1_PATH, MANAGER_INTERFACE, managerPropertiesSchema, opts);
  }

  // ---- Machine objects ----------------------------------------------------------------------------

  async machineProperties(path: string, opts?: Machine1CallOptions): Promise<MachineProperties> {
    return this.getAll(path, MACHINE_INTERFACE, machinePropertiesSchema, opts, machinePropertiesBySignature);
  }

  async machineProperty<K extends keyof MachineProperties>(
    path: string,
    property: K,
    opts?: Machine1CallOptions,
  ): Promise<MachineProperties[K]> {
    const [value] = await this.call(
      path,
      PROPERTIES_INTERFACE,
      'Get',
      'ss',
      [MACHINE_INTERFACE, property],
      z.tuple([z.instanceof(Variant)]),
      opts,
    );
    const parsed = machinePropertiesSchema.shape[property].safeParse(value.value);
    if (!parsed.success)
      throw new BusError('BadReply', `property ${property} of ${path} has an unexpected type`);
    return parsed.data as MachineProperties[K];
  }

  async machineTerminate(path: string): Promise<void> {
    await this.call(path, MACHINE_INTERFACE, 'Terminate', '', [], z.tuple([]));
  }

  async machineKill(path: string, who: 'leader' | 'all', signal: number): Promise<void> {
    await this.call(path, MACHINE_INTERFACE, 'Kill', 'si', [who, signal], z.tuple([]));
  }

  async machineGetAddresses(path: string, opts?: Machine1CallOptions): Promise<RawAddress[]> {
    const [list] = await this.call(path, MACHINE_INTERFACE, 'GetAddresses', '', [], addressReply, opts);
    return list.map(([family, b]) => ({ family, bytes: b }));
  }

  async machineGetOSRelease(path: string): Promise<Record<string, string>> {
    return toRecord(
      (await this.call(path, MACHINE_INTERFACE, 'GetOSRelease', '', [], z.tuple([stringMap])))[0],
    );
  }

  async machineGetUIDShift(path: string): Promise<number> {
    return (await this.call(path, MACHINE_INTERFACE, 'GetUIDShift', '', [], z.tuple([u32])))[0];
  }

  machineOpenPTY(_path: string): Promise<never> {
    return fdUnsupported('OpenPTY');
  }

  machineOpenLogin(_path: string): Promise<never> {
    return fdUnsupported('OpenLogin');
  }

  machineOpenShell(
    _path: string,
    _user: string,
    _binary: string,
    _args: readonly string[],
    _environment: readonly string[],
  ): Promise<never> {
    return fdUnsupported('OpenShell');
  }

  async machineBindMount(
    path: string,
    source: string,
    destination: string,
    readOnly: boolean,
    mkdir: boolean,
  ): Promise<void> {
    await this.call(
      path,
      MACHINE_INTERFACE,
      'BindMount',
      'ssbb',
      [source, destination, readOnly, mkdir],
      z.tuple([]),
    );
  }

  async machineCopyFrom(path: string, source: string, destination: string): Promise<void> {
    await this.call(path, MACHINE_INTERFACE, 'CopyFrom', 'ss', [source, destination], z.tuple([]));
  }

  async machineCopyTo(path: string, source: string, destination: string): Promise<void> {
    await this.call(path, MACHINE_INTERFACE, 'CopyTo', 'ss', [source, destination], z.tuple([]));
  }

  machineOpenRootDirectory(_path: string): Promise<never> {
    return fdUnsupported('OpenRootDirectory');
  }

  // ---- plumbing -----------------------------------------------------------------------------------

  private manager<T extends z.ZodType>(
    member: string,
    signature: string,
    body: readonly unknown[],
    reply: T,
    opts?: Machine1CallOptions,
  ): Promise<z.infer<T>> {
    return this.call(MACHINE1_PATH, MANAGER_INTERFACE, member, signature, body, reply, opts);
  }

  private async call<T extends z.ZodType>(
    path: string,
    iface: string,
    member: string,
    signature: string,
    body: readonly unknown[],
    reply: T,
    opts: Machine1CallOptions = {},
    readBody?: CallSpec['readBody'],
  ): Promise<z.infer<T>> {
    const raw = await this.bus.call({
      destination: MACHINE1_NAME,
      path,
      interface: iface,
      member,
      signature,
      body,
      noAutoStart: opts.noAutoStart ?? this.defaults.noAutoStart,
      timeoutMs: opts.timeoutMs ?? this.defaults.timeoutMs,
      readBody,
    });
    const parsed = reply.safeParse(raw);
    if (!parsed.success)
      throw new BusError('BadReply', `${iface}.${member}: reply does not have the documented type`);
    return parsed.data;
  }

  private async getAll<T extends z.ZodType>(
    path: string,
    iface: string,
    schema: T,
    opts?: Machine1CallOptions,
    /** The properties without the schema, when their signatures already say what it checks. */
    bySignature?: (p: PropertyValues) => z.infer<T> | undefined,
  ): Promise<z.infer<T>> {
    const [props] = await this.call(
      path,
      PROPERTIES_INTERFACE,
      'GetAll',
      's',
      [iface],
      propertiesReply,
      opts,
      decodePropertiesBody,
    );
    let values: Readonly<Record<string, unknown>>;
    if (props instanceof PropertyValues) {
      const typed = bySignature?.(props);
      if (typed !== undefined) return typed;
      values = props.values;
    } else {
      const unwrapped: Record<string, unknown> = {};
      for (const key of Object.keys(props)) unwrapped[key] = props[key]?.value;
      values = unwrapped;
    }
    const parsed = schema.safeParse(values);
    if (!parsed.success)
      throw new BusError('BadReply', `${iface} properties of ${path} do not have the documented types`);
    return parsed.data;
  }
}

function toRecord(fields: z.infer<typeof stringMap>): Record<string, string> {
  return Array.isArray(fields) ? Object.fromEntries(fields) : { ...fields };
}

function fdUnsupported(member: string): Promise<never> {
  return Promise.reject(
    new BusError('NotSupported', `${member} returns a file descriptor; this D-Bus client cannot receive fds`),
  );
}

/** A plain object whose every value is a variant (what the codecs make of `a{sv}`). */
function isVariantRecord(value: unknown): value is Record<string, Variant> {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || Buffer.isBuffer(value))
    return false;
  for (const v of Object.values(value)) if (!(v instanceof Variant)) return false;
  return true;
}
