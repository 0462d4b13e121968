#!/usr/bin/env bash
# make bench: every benchmark, side by side with its peer. Results in bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
export VSPHERE_TESTBED=${VSPHERE_TESTBED_DIR:-/var/lib/vsphere-testbed}
command -v hspace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q ganeti-htools >/dev/null
swift build -c release --product vsphere-ctl
swift build -c release --product vsphere-agent

echo "== placement (vs Ganeti hspace)"
python3 bench/placement.py

echo "== vm-start (vs virsh start)"
bash scripts/testbed.sh down >/dev/null 2>&1 || true
trap 'bash scripts/testbed.sh down' EXIT
VSPHERE_AGENT=$PWD/.build/release/vsphere-agent bash scripts/testbed.sh up 1 1
python3 bench/vm_start.py
