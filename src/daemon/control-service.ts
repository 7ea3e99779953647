/**
 * `io.mymachinesd.Control`: the control socket behind `mymachinesd list` and `resolve`. Read-only
 * by construction: its only methods report the view and the registry's status.
 */
import { setImmediate } from 'node:timers/promises';
import { z } from 'zod';
import { method, type VarlinkInterface } from '../varlink/interface.js';
import { parameters } from '../varlink/parameters.js';
import { EncodedParameters, type VarlinkSuccessReply } from '../varlink/protocol.js';
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

# Every machine, in registration order, and how the registry is doing.
method List() -> (machines: []Machine, status: Status)

# One machine: by its exact name, without the zone suffix, or case-insensitively
# when that is unambiguous.
method Resolve(name: string) -> (machine: Machine)

error NoSuchMachine (name: string)
error AmbiguousName (name: string, candidates: []string)
`;

export interface ControlDeps {
  readonly view: RegistryView;
  readonly status: () => RegistryStatus;
  readonly domain: string;
  /** Why a container gets no vu-/vg- names (from the userdb module), undefined when it does. */
  readonly userdbProblem: (machine: MachineRecord) => string | undefined;
}

/**
 * Machines serialized per event-loop turn by List. At 10,000 machines the reply is about 6 MB of
 * JSON: built, serialized and encoded in one go it held the event loop (DNS and userdb included)
 * for 120–131 ms (BENCHMARKS.md); a slice of 100 takes well under a millisecond.
 */
export const LIST_SLICE = 100;

/**
 * List's reply: the machines as they are when the call arrives (records are immutable, the list is
 * copied) with the status of that moment, serialized and encoded LIST_SLICE at a time with a turn of
 * the event loop between slices. The bytes are those of one JSON.stringify of `{ machines, status }`.
 */
async function list(
  view: RegistryView,
  status: () => RegistryStatus,
  served: (m: MachineRecord) => ReturnType<typeof controlMachine>,
): Promise<VarlinkSuccessReply> {
  const machines = view.all().filter((m) => m.class !== 'host');
  const s = status();
  const statusJson = JSON.stringify({
    ...s,
    machinedOwner: s.machinedOwner ?? null,
    lastError: s.lastError ?? null,
  });
  const parts = [Buffer.from('{"machines":[')];
  for (let i = 0; i < machines.length; i += LIST_SLICE) {
    if (i > 0) await setImmediate();
    const json = JSON.stringify(machines.slice(i, i + LIST_SLICE).map(served));
    // the slice's elements without its brackets, after a comma from the second slice on
    parts.push(Buffer.from(i > 0 ? `,${json.slice(1, -1)}` : json.slice(1, -1)));
  }
  parts.push(Buffer.from(`],"status":${statusJson}}`));
  return { parameters: new EncodedParameters(parts) };
}

export function controlInterface(deps: ControlDeps): VarlinkInterface {
  const served = (m: MachineRecord): ReturnType<typeof controlMachine> =>
    controlMachine(m, deps.userdbProblem);
  return {
    name: CONTROL_INTERFACE,
    description: CONTROL_IDL,
    methods: {
      [`${CONTROL_INTERFACE}.List`]: method(parameters({}), () => list(deps.view, deps.status, served)),
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
