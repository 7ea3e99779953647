#!/bin/bash
# scripts/setup.sh [--with-tests] [--with-bench] [--with-resolved] - idempotent set-up on Debian 12.
#
# 1. Debian packages the daemon, the tests and the demo use (only when running as root and
#    something is missing). Installing libnss-mymachines edits /etc/nsswitch.conf and
#    systemd-resolved replaces /etc/resolv.conf: both files are backed up first and restored, so
#    the host's name resolution is exactly as before. Maintainer scripts may not start services.
# 2. `npm ci` when node_modules is missing or older than package-lock.json.
# 3. The TypeScript build (dist/), then the daemon's bundles (scripts/bundle.mjs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

want=(dbus-daemon dbus-bin systemd-container libnss-mymachines libnss-systemd systemd-userdbd
	dnsutils knot-dnsutils iproute2 iputils-ping util-linux python3 openssh-client)
want_resolved=0
for arg in "$@"; do
	case $arg in
	# dnsperf: the load test's generator and the benchmark harness's test (test/bench-harness)
	--with-tests) want+=(dnsperf) ;;
	--with-bench) want+=(dnsperf dnsmasq-base linux-perf) ;;
	--with-resolved) want_resolved=1 ;;
	*) log "unknown option $arg"; exit 2 ;;
	esac
done

installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing=()
for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
resolved_missing=()
if [ "$want_resolved" = 1 ]; then
	for p in systemd-resolved libnss-resolve; do installed "$p" || resolved_missing+=("$p"); done
fi

if [ ${#missing[@]} -gt 0 ] || [ ${#resolved_missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		log "missing Debian packages: ${missing[*]} ${resolved_missing[*]}"
		log "run as root to install them (apt-get install ...); continuing without"
	else
		backup=$(mktemp -d /tmp/mymachinesd-setup.XXXXXX)
		cp -a /etc/nsswitch.conf "$backup/nsswitch.conf"
		cp -a /etc/resolv.conf "$backup/resolv.conf" 2>/dev/null || true
		prc=0
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
			prc=1
		fi
		restore() {
			[ "$prc" = 1 ] && rm -f /usr/sbin/policy-rc.d
			if ! cmp -s /etc/nsswitch.conf "$backup/nsswitch.conf"; then
				cp -a "$backup/nsswitch.conf" /etc/nsswitch.conf
				log "restored /etc/nsswitch.conf (a package's maintainer script had edited it)"
			fi
			if [ -e "$backup/resolv.conf" ] && { [ -L /etc/resolv.conf ] || ! cmp -s /etc/resolv.conf "$backup/resolv.conf"; }; then
				rm -f /etc/resolv.conf && cp -a "$backup/resolv.conf" /etc/resolv.conf
				log "restored /etc/resolv.conf"
			fi
			rm -rf "$backup"
		}
		trap restore EXIT
		export DEBIAN_FRONTEND=noninteractive
		log "installing: ${missing[*]} ${resolved_missing[*]}"
		apt-get update -qq
		[ ${#missing[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
		if [ ${#resolved_missing[@]} -gt 0 ]; then
			# systemd-resolved's postinst turns /etc/resolv.conf into a symlink to a stub that
			# nothing serves on a host without systemd: configure it in a private mount namespace
			# where /etc/resolv.conf is a bind-mounted copy, so the host's file stays as it is.
			dl=$(mktemp -d /tmp/mymachinesd-debs.XXXXXX)
			chmod 755 "$dl" # apt downloads as user _apt
			ver=$(dpkg-query -W -f='${Version}' systemd)
			(cd "$dl" && apt-get download -qq "systemd-resolved=$ver" "libnss-resolve=$ver")
			cp /etc/resolv.conf "$dl/resolv.conf"
			unshare --mount --propagation private sh -ec '
				mount --bind "$1/resolv.conf" /etc/resolv.conf
				dpkg --unpack "$1"/*.deb >/dev/null
				rm -f /etc/nsswitch.conf.nss.libnss-resolve-will-install
				dpkg --configure systemd-resolved libnss-resolve >/dev/null 2>&1 || dpkg --configure systemd-resolved libnss-resolve
			' sh "$dl" >&2
			rm -rf "$dl"
		fi
	fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	log "npm ci"
	npm ci --no-audit --no-fund >&2
fi
log "build"
npx --no-install tsc -p tsconfig.json
node scripts/bundle.mjs
