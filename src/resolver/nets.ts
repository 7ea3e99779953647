/**
 * Address prefixes (CIDR) for the two address policies of the stub: `excludeNets` (addresses left
 * out of answers) and `allowNets` (clients we answer at all). Pure.
 */
import { formatAddress, parseAddress } from '../registry-client/address.js';

export interface Net {
  /** 4 or 16 bytes, host bits cleared. */
  readonly bytes: Buffer;
  readonly prefix: number;
  /** Canonical text, e.g. `172.17.0.0/16`. */
  readonly text: string;
}

/** `ADDR/PREFIX` or a bare address (a host prefix). Undefined when it is not one. */
export function parseNet(text: string): Net | undefined {
  const slash = text.indexOf('/');
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const bytes = parseAddress(addressText);
  if (!bytes) return undefined;
  const maxPrefix = bytes.length * 8;
  let prefix = maxPrefix;
  if (slash >= 0) {
    const prefixText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefixText)) return undefined;
    prefix = Number(prefixText);
    if (prefix > maxPrefix) return undefined;
  }
  for (let bit = prefix; bit < maxPrefix; bit++) {
    const i = bit >> 3;
    bytes[i] = (bytes[i] ?? 0) & ~(0x80 >> (bit & 7));
  }
  return { bytes, prefix, text: `${formatAddress(bytes)}/${prefix}` };
}

export function netContains(net: Net, address: Uint8Array): boolean {
  if (address.length !== net.bytes.length) return false;
  const full = net.prefix >> 3;
  for (let i = 0; i < full; i++) if (address[i] !== net.bytes[i]) return false;
  const rest = net.prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((address[full] ?? 0) & mask) === net.bytes[full];
}

export function anyNetContains(nets: readonly Net[], address: Uint8Array): boolean {
  for (const net of nets) if (netContains(net, address)) return true;
  return false;
}

/**
 * The bytes of a socket peer address as Node reports it: a link-local zone (`fe80::1%eth0`) is
 * dropped and an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, from a dual-stack socket) becomes
 * the IPv4 address, so `127.0.0.0/8` matches it.
 */
export function peerAddressBytes(address: string): Buffer | undefined {
  const percent = address.indexOf('%');
  const bytes = parseAddress(percent < 0 ? address : address.slice(0, percent));
  if (bytes?.length !== 16) return bytes;
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return bytes;
  if (bytes[10] !== 0xff || bytes[11] !== 0xff) return bytes;
  return bytes.subarray(12);
}

/** Loopback: who may always ask (RFC 1122 §3.2.1.3, RFC 4291 §2.5.3). */
export const LOOPBACK_NETS: readonly string[] = ['127.0.0.0/8', '::1/128'];

/**
 * Decides, per peer address string, whether a client may use us. Answers are memoised per string
 * (clients are few and come back), bounded so a spoofed flood cannot grow it without limit.
 */
export class ClientFilter {
  private readonly memo = new Map<string, boolean>();

  constructor(
    private readonly nets: readonly Net[],
    private readonly memoLimit = 4096,
  ) {}

  allows(address: string): boolean {
    const known = this.memo.get(address);
    if (known !== undefined) return known;
    const bytes = peerAddressBytes(address);
    const allowed = bytes !== undefined && anyNetContains(this.nets, bytes);
    if (this.memo.size >= this.memoLimit) this.memo.clear();
    this.memo.set(address, allowed);
    return allowed;
  }
}
