/**
 * Every error the DNS stub reports to its owner, in one table (fastify's `errors.js` habit): a stable
 * code, a message template, and the exit status the daemon should use (DESIGN §3: bad flags exit 2,
 * a listener that cannot bind exits 1). `docs/dns.md` lists every code; a test keeps the two equal.
 */

export const DNS_ERRORS = {
  DNS_BAD_DOMAIN: { exitStatus: 2, template: 'domain %s is not a valid DNS name' },
  DNS_BAD_TTL: { exitStatus: 2, template: 'ttl %s is not a whole number of seconds in 0..2147483647' },
  DNS_BAD_LISTEN: { exitStatus: 2, template: 'listen address %s is not HOST:PORT or [IPV6]:PORT' },
  DNS_BAD_NET: { exitStatus: 2, template: '%s is not an address or ADDRESS/PREFIX' },
  DNS_BAD_UPSTREAM: {
    exitStatus: 2,
    template: 'forward upstream %s is not ADDR[:PORT], [IPV6]:PORT or resolv.conf',
  },
  DNS_BAD_OPTION: { exitStatus: 2, template: '%s' },
  DNS_NO_UPSTREAM: { exitStatus: 2, template: 'forward resolv.conf: %s' },
  DNS_FORWARD_LOOP: {
    exitStatus: 2,
    template: 'forward upstream %s is our own listen address: queries would loop',
  },
  DNS_BIND_FAILED: { exitStatus: 1, template: 'cannot listen on %s' },
} as const;

export type DnsErrorCode = keyof typeof DNS_ERRORS;

export class DnsError extends Error {
  override readonly name = 'DnsError';
  readonly exitStatus: 1 | 2;

  constructor(
    readonly code: DnsErrorCode,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(DNS_ERRORS[code].template.replace('%s', detail), options);
    this.exitStatus = DNS_ERRORS[code].exitStatus;
  }
}

export function isDnsError(value: unknown): value is DnsError {
  return value instanceof DnsError;
}
