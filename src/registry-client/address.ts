/**
 * IP address bytes ↔ text, without zone ids. Pure.
 *
 * machined hands out addresses as `(family, bytes)`; DNS and the view use the canonical text form
 * (RFC 5952 for IPv6), which is also what `dig` and `getaddrinfo` print.
 */
import { isIPv4, isIPv6 } from 'node:net';

export const AF_INET = 2;
export const AF_INET6 = 10;

export function formatAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  if (bytes.length !== 16) throw new RangeError(`address must be 4 or 16 bytes, not ${bytes.length}`);
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0));
  // RFC 5952 §4.2: compress the longest run of two or more zero words, the first one on a tie.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number): string =>
    words
      .slice(from, to)
      .map((w) => w.toString(16))
      .join(':');
  if (bestStart < 0) return hex(0, 8);
  // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) addresses end in dotted quad, as
  // inet_ntop(3) prints them (RFC 5952 §5).
  if (bestStart === 0 && (bestLength === 6 || (bestLength === 5 && words[5] === 0xffff)))
    return `::${bestLength === 5 ? 'ffff:' : ''}${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}

/** Parses an IPv4 or IPv6 literal (no zone) to bytes; undefined when it is not one. */
export function parseAddress(text: string): Buffer | undefined {
  if (isIPv4(text)) return Buffer.from(text.split('.').map(Number));
  if (!isIPv6(text) || text.includes('%')) return undefined; // node accepts zones; we never do
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hex words, so only one form is left to parse.
  const hexOnly = text.replace(
    /(\d+)\.(\d+)\.(\d+)\.(\d+)$/,
    (_m, a: string, b: string, c: string, d: string) =>
      [(Number(a) << 8) | Number(b), (Number(c) << 8) | Number(d)].map((w) => w.toString(16)).join(':'),
  );
  const [left = '', right] = hexOnly.split('::');
  const parseWords = (s: string): number[] => (s === '' ? [] : s.split(':').map((w) => parseInt(w, 16)));
  const leftWords = parseWords(left);
  const rightWords = right === undefined ? [] : parseWords(right);
  const zeros = right === undefined ? 0 : 8 - leftWords.length - rightWords.length;
  const words = [...leftWords, ...new Array<number>(zeros).fill(0), ...rightWords];
  const out = Buffer.alloc(16);
  words.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  return out;
}

/** fe80::/10 and 169.254.0.0/16: meaningless without the link they are on. */
export function isLinkLocal(bytes: Uint8Array): boolean {
  if (bytes.length === 4) return bytes[0] === 169 && bytes[1] === 254;
  return bytes[0] === 0xfe && ((bytes[1] ?? 0) & 0xc0) === 0x80;
}
