#!/bin/bash
# bench/run.sh [NAME...] - set-up once (scripts/setup.sh --with-bench: dnsperf, dnsmasq, perf, build),
# then the named benchmarks in order (all when none is named): dns getaddrinfo userdb propagation scale micro.
# Each appends a dated section to BENCHMARKS.md. Needs root: everything runs in private namespaces.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
all=(dns getaddrinfo userdb propagation scale micro)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")
for n in "${names[@]}"; do
	case " ${all[*]} " in *" $n "*) ;; *) echo "bench/run.sh: unknown benchmark $n (known: ${all[*]})" >&2; exit 2 ;; esac
done
if [ "$(id -u)" != 0 ]; then
	echo "bench/run.sh: benchmarks need root (private mount and network namespaces, taskset)" >&2
	exit 1
fi
scripts/setup.sh --with-bench
status=0
for n in "${names[@]}"; do
	echo "== bench:$n" >&2
	node "dist/bench/$n.js" || status=1
done
exit $status
