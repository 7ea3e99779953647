#!/bin/bash
# scripts/test.sh [AVA ARGS...] - every test: set-up, type-check + build, lint, then the ava suite
# (unit, integration against a private dbus-daemon, conformance against the real
# systemd-machined 252 in private namespaces). Exit status: 0 only if all of them passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --with-tests --with-resolved || exit 1
status=0
echo '== lint (eslint, prettier)' >&2
npx --no-install eslint . || status=1
npx --no-install prettier --check . || status=1
echo '== tests (ava)' >&2
npx --no-install ava "$@" || status=1
if [ $# -eq 0 ]; then
	echo '== load test (ava, alone: it keeps both cores busy)' >&2
	npx --no-install ava --config ava.load.config.js || status=1
fi
exit $status
