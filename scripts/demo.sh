#!/bin/bash
# scripts/demo.sh - set-up, then mymachinesd end to end (demo/demo.ts): as root with the real
# systemd-machined 252 in private namespaces, otherwise with the test registry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec node dist/demo/demo.js
