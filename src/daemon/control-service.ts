/**
 * `io.mymachinesd.Control`: the control socket behind `mymachinesd list` and `resolve`. Read-only
 * by construction: its only methods report the view and the registry's status.
 */
import { setImmediate } from 'node:timers/promises';
import { z } from 'zod';
import { VARLINK_BUFFER_MAX } from '../varlink/framing.js';
import { method, type VarlinkInterface, type VarlinkStream } from '../varlink/interface.js';
import { parameters } from '../varlink/parameters.js';
import { EncodedParameters, type VarlinkReply } from '../varlink/protocol.js';
import type { RegistryStatus } from '../registry-client/sync.js';
import type { MachineRecord, RegistryView } from '../registry-client/view.js';
import { controlMachine, findMachine } from './control.js';

export const CONTROL_INTERFACE = 'io.mymachinesd.Control';

export const CONTROL_IDL = `# Read-only view of mymachinesd: the machines it follows, as it serves them.
interface io.mymachinesd.Control

type Interface (ifindex: int, name: ?string)

# An address as a socket uses it: link-local IPv6 addresses carry their scope
# (socketAddress "fe80::1%ve-web1"), which DNS answers cannot.
type Address (
  address: string,
  family: int,
  socketAddress: string,
  scope: int,
  interface: ?string,
  linkLocal: bool
)

# One line of the leader's uid_map or gid_map.
type IdRange (inner: int, outer: int, count: int)

type Machine (
  name: string,
  class: string,
  service: string,
  state: string,
  leader: int,
  leaderAlive: bool,
  unit: string,
  rootDirectory: string,
  id: string,
  interfaces: []Interface,
  addresses: []Address,
  addressSource: string,
  addressError: ?string,
  uidRanges: ?[]IdRange,
  gidRanges: ?[]IdRange,
  userdbProblem: ?string
)

type Status (
  busConnected: bool,
  machinedOwner: ?string,
  lastSyncAt: int,
  lastSyncMs: int,
  machines: int,
  lastError: ?string,
  # ms between two address refreshes of one machine (--refresh, stretched by --refresh-rate)
  refreshRoundMs: int,
  # GetMachineAddresses calls made since start
  addressCalls: int,
  # refreshes that kept a container's addresses without a call: its network
  # namespace (addresses, routes) was unchanged since machined last answered and
  # it was not its turn to be asked anyway (--refresh-full)
  addressesKept: int
)

# Every machine, in registration order, and how the registry is doing. With
# "more": the machines in slices of at most 100, one reply each, and the
# status in the last reply only. Without it, one reply; over 16 MiB
# (about 28,000 machines) TooManyMachines instead.
method List() -> (machines: []Machine, status: ?Status)

# One machine: by its exact name, without the zone suffix, or case-insensitively
# when that is unambiguous.
method Resolve(name: string) -> (machine: Machine)

error NoSuchMachine (name: string)
# List's one reply would be larger than a Varlink message may be: call it with "more".
error TooManyMachines (machines: int, bytes: int)
error AmbiguousName (name: string, candidates: []string)
`;

export interface ControlDeps {
  readonly view: RegistryView;
  readonly status: () => RegistryStatus;
  readonly domain: string;
  /** Why a container gets no vu-/vg- names (from the userdb module), undefined when it does. */
  readonly userdbProblem: (machine: MachineRecord) => string | undefined;
  /** The largest single List reply (default: a Varlink message's limit, 16 MiB). */
  readonly replyMax?: number;
}

/**
 * Machines serialized per event-loop turn by List. At 10,000 machines the reply is about 6 MB of
 * JSON: built, serialized and encoded in one go it held the event loop (DNS and userdb included)
 * for 120–131 ms (BENCHMARKS.md); a slice of 100 takes well under a millisecond.
 */
export const LIST_SLICE = 100;

/** The machines List reports: as they are when the call arrives (records are immutable). */
function listed(view: RegistryView): readonly MachineRecord[] {
  return view.all().filter((m) => m.class !== 'host');
}

function statusParameters(status: RegistryStatus): Record<string, unknown> {
  return { ...status, machinedOwner: status.machinedOwner ?? null, lastError: status.lastError ?? null };
}

/**
 * List's one reply: the machines as they are when the call arrives with the status of that moment,
 * serialized and encoded LIST_SLICE at a time with a turn of the event loop between slices. The
 * bytes are those of one JSON.stringify of `{ machines, status }`; over `replyMax`, TooManyMachines.
 */
async function list(
  view: RegistryView,
  status: () => RegistryStatus,
  served: (m: MachineRecord) => ReturnType<typeof controlMachine>,
  replyMax: number,
): Promise<VarlinkReply> {
  const machines = listed(view);
  const statusJson = JSON.stringify(statusParameters(status()));
  const parts = [Buffer.from('{"machines":[')];
  let bytes = parts[0]?.length ?? 0;
  for (let i = 0; i < machines.length; i += LIST_SLICE) {
    if (i > 0) await setImmediate();
    const json = JSON.stringify(machines.slice(i, i + LIST_SLICE).map(served));
    // the slice's elements without its brackets, after a comma from the second slice on
    const part = Buffer.from(i > 0 ? `,${json.slice(1, -1)}` : json.slice(1, -1));
    bytes += part.length;
    if (bytes > replyMax)
      return {
        error: `${CONTROL_INTERFACE}.TooManyMachines`,
        parameters: { machines: machines.length, bytes },
      };
    parts.push(part);
  }
  parts.push(Buffer.from(`],"status":${statusJson}}`));
  return { parameters: new EncodedParameters(parts) };
}

/**
 * List with `more`: LIST_SLICE machines per reply, the status (of the moment of the call) in the
 * last one; each reply is made when the stream asks for it, and the stream takes the turn share.
 */
function listSlices(
  view: RegistryView,
  status: () => RegistryStatus,
  served: (m: MachineRecord) => ReturnType<typeof controlMachine>,
): VarlinkStream {
  const machines = listed(view);
  const statusNow = statusParameters(status());
  function* slices(): Generator<Record<string, unknown>, void, undefined> {
    for (let i = 0; i < machines.length || i === 0; i += LIST_SLICE) {
      const slice = machines.slice(i, i + LIST_SLICE).map(served);
      yield i + LIST_SLICE >= machines.length ? { machines: slice, status: statusNow } : { machines: slice };
    }
  }
  // never sent: the stream has at least one reply, the one with the status
  return { stream: slices(), whenEmpty: { error: `${CONTROL_INTERFACE}.TooManyMachines`, parameters: {} } };
}

export function controlInterface(deps: ControlDeps): VarlinkInterface {
  const served = (m: MachineRecord): ReturnType<typeof controlMachine> =>
    controlMachine(m, deps.userdbProblem);
  return {
    name: CONTROL_INTERFACE,
    description: CONTROL_IDL,
    methods: {
      [`${CONTROL_INTERFACE}.List`]: method(parameters({}), (_, call) =>
        call.more
          ? listSlices(deps.view, deps.status, served)
          : list(deps.view, deps.status, served, deps.replyMax ?? VARLINK_BUFFER_MAX),
      ),
      [`${CONTROL_INTERFACE}.Resolve`]: method(parameters({ name: z.string() }), ({ name }) => {
        const found = findMachine(deps.view, name, deps.domain);
        switch (found.kind) {
          case 'found':
            return { parameters: { machine: served(found.machine) } };
          case 'unknown':
            return { error: `${CONTROL_INTERFACE}.NoSuchMachine`, parameters: { name } };
          case 'ambiguous':
            return {
              error: `${CONTROL_INTERFACE}.AmbiguousName`,
              parameters: { name, candidates: found.candidates },
            };
        }
      }),
    },
  };
}
