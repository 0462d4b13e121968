#!/usr/bin/env bash
# make bench: every benchmark, side by side with its peer, on a fresh testbed.
set -euo pipefail
cd "$(dirname "$0")/.."
export VSPHERE_TESTBED=${VSPHERE_TESTBED_DIR:-/var/lib/vsphere-testbed}
bash scripts/testbed.sh down >/dev/null 2>&1 || true
trap 'bash scripts/testbed.sh down' EXIT
bash scripts/testbed.sh up 1 1
python3 bench/vm_start.py
