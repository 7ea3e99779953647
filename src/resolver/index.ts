/**
 * The resolver's public surface for the daemon and the benchmarks. See docs/dns.md.
 */
export { DnsServer, type BoundListener } from './server.js';
export {
  DEFAULT_DOMAIN,
  DEFAULT_LISTEN,
  parseListenAddress,
  parseUpstream,
  resolveConfig,
  type DnsServerOptions,
  type InheritedSocket,
  type ListenAddress,
  type Upstream,
} from './config.js';
export { DNS_ERRORS, DnsError, isDnsError, type DnsErrorCode } from './errors.js';
export { answer, rcodeOf, type Outcome, type Reply, type Transport } from './answer.js';
export { compileZone, type Zone, type ZonePolicy } from './zone.js';
export { parseNet, type Net } from './nets.js';
