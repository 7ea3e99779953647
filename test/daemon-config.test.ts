import test from 'ava';
import { decodeProcAddress } from '../src/daemon/activation.js';
import {
  DEFAULT_CONTROL,
  DEFAULT_DNS,
  DEFAULT_USERDB,
  parseArgs,
  UsageError,
  type ServeConfig,
} from '../src/daemon/config.js';

const serve = (...args: string[]): ServeConfig => {
  const c = parseArgs(['serve', ...args], {});
  if (c.command !== 'serve') throw new Error('not serve');
  return c;
};

test('serve defaults follow the CLI contract', (t) => {
  const c = serve();
  t.is(c.busAddress, 'unix:path=/run/dbus/system_bus_socket');
  t.deepEqual(c.dns, [DEFAULT_DNS]);
  t.is(c.domain, 'machine');
  t.deepEqual(c.forward, []);
  t.is(c.ttl, 0);
  t.is(c.userdb, DEFAULT_USERDB);
  t.is(c.control, DEFAULT_CONTROL);
  t.is(c.logLevel, 'info');
  t.false(c.includeLinkLocal);
  t.is(c.resolvedLink, undefined);
  t.is(c.refreshSeconds, 10);
  t.is(c.refreshRate, 100);
  t.is(c.refreshFullRounds, 6);
});

test('--refresh-full takes a number of rounds', (t) => {
  t.is(serve('--refresh-full', '1').refreshFullRounds, 1);
  t.is(serve('--refresh-full=30').refreshFullRounds, 30);
});

test('--refresh-rate takes machines per second', (t) => {
  t.is(serve('--refresh-rate', '250').refreshRate, 250);
  t.is(serve('--refresh-rate=1').refreshRate, 1);
});

test('the bus defaults to $DBUS_SYSTEM_BUS_ADDRESS', (t) => {
  const c = parseArgs(['serve'], { DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/tmp/x' });
  t.is(c.command === 'serve' ? c.busAddress : '', 'unix:path=/tmp/x');
});

test('--dns is repeatable and takes IPv4:PORT and [IPv6]:PORT, port 0 allowed', (t) => {
  t.deepEqual(serve('--dns', '127.0.0.1:0', '--dns=[::1]:5353').dns, ['127.0.0.1:0', '[::1]:5353']);
});

test('--forward takes ADDR, ADDR:PORT, [V6]:PORT and resolv.conf', (t) => {
  t.deepEqual(
    serve(
      '--forward',
      '127.0.0.1',
      '--forward',
      '127.0.0.2:5300',
      '--forward',
      '[::1]:53',
      '--forward',
      'resolv.conf',
    ).forward,
    ['127.0.0.1', '127.0.0.2:5300', '[::1]:53', 'resolv.conf'],
  );
});

test('--domain is lower-cased and loses a trailing dot', (t) => {
  t.is(serve('--domain', 'Containers.Example.').domain, 'containers.example');
});

test('--register-resolved takes an optional link name', (t) => {
  t.is(serve('--register-resolved').resolvedLink, 'mymachines0');
  t.is(serve('--register-resolved=mm0').resolvedLink, 'mm0');
});

const bad: [string[], RegExp][] = [
  [[], /a command is required/],
  [['frobnicate'], /unknown command "frobnicate"/],
  [['serve', '--bogus'], /unknown option --bogus/],
  [['serve', '--dns'], /--dns needs a value/],
  [['serve', '--dns', 'localhost:53'], /expected IPV4:PORT/],
  [['serve', '--dns', '127.0.0.1:65536'], /expected IPV4:PORT/],
  [['serve', '--dns', '127.0.0.1'], /expected IPV4:PORT/],
  [['serve', '--forward', 'dns.example'], /expected ADDR\[:PORT\]/],
  [['serve', '--ttl', '-1'], /whole number of seconds/],
  [['serve', '--ttl', 'abc'], /whole number/],
  [['serve', '--domain', 'a..b'], /not a valid domain/],
  [['serve', '--log-level', 'loud'], /expected error, warn, info or debug/],
  [['serve', '--userdb', 'relative/path'], /absolute path/],
  [['serve', '--exclude-net', '10.0.0.0/33'], /ADDRESS\/PREFIX/],
  [['serve', '--no-dns', '--dns', '127.0.0.1:53'], /contradict/],
  [['serve', '--no-dns', '--forward', '127.0.0.1'], /need the DNS stub/],
  [['serve', '--no-dns=yes'], /takes no value/],
  [['serve', 'extra'], /unexpected argument "extra"/],
  [['serve', '--refresh', '0'], /≥ 1/],
  [['serve', '--refresh-rate', '0'], /machines per second ≥ 1/],
  [['serve', '--refresh-rate', '1.5'], /machines per second ≥ 1/],
  [['serve', '--refresh-full', '0'], /whole number of rounds ≥ 1/],
  [['serve', '--refresh-full', 'x'], /whole number of rounds ≥ 1/],
  [['resolve'], /a machine name is required/],
  [['resolve', 'a', 'b'], /unexpected argument "b"/],
  [['user'], /a name or numeric id is required/],
  [['group', '4294967295'], /not a valid id/],
  [['list', '--bogus'], /unknown option --bogus/],
];
for (const [argv, reason] of bad) {
  test(`bad flags are a one-line usage error: ${JSON.stringify(argv)}`, (t) => {
    const err = t.throws(() => parseArgs(argv, {}), { instanceOf: UsageError });
    t.regex(err?.message ?? '', reason);
    t.false((err?.message ?? '').includes('\n'));
  });
}

test('user and group take a name or a numeric id', (t) => {
  t.deepEqual(parseArgs(['user', 'vu-alpha-0'], {}), {
    command: 'user',
    key: 'vu-alpha-0',
    json: false,
    userdb: DEFAULT_USERDB,
  });
  t.deepEqual(parseArgs(['group', '100005', '--json'], {}), {
    command: 'group',
    key: 100005,
    json: true,
    userdb: DEFAULT_USERDB,
  });
});

test('/proc/net addresses decode to text', (t) => {
  t.is(decodeProcAddress('9900007F'), '127.0.0.153');
  t.is(decodeProcAddress('00000000000000000000000001000000'), '::1');
  t.is(decodeProcAddress('0000000000000000FFFF00000100007F'), '::ffff:127.0.0.1');
});
