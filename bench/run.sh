#!/usr/bin/env bash
# make bench: every benchmark, side by side with its peer. Results in bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
export VSPHERE_TESTBED=${VSPHERE_TESTBED_DIR:-/var/lib/vsphere-testbed}
command -v hspace >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q ganeti-htools >/dev/null
bash scripts/build-release.sh

echo "== placement (vs Ganeti hspace)"
python3 bench/placement.py

echo "== consolidation (vs a keep-the-fullest best-fit repack, and the lower bound)"
python3 bench/consolidation.py

bash scripts/testbed.sh down >/dev/null 2>&1 || true
trap 'bash scripts/testbed.sh down' EXIT
VSPHERE_AGENT=$PWD/.build/release/vsphere-agent VSPHERE_CONTROLLER=$PWD/.build/release/vsphere-controller \
    VSPHERE_CTL=$PWD/.build/release/vsphere-ctl VSPHERE_CONFIG=$VSPHERE_TESTBED/ctl.json bash scripts/testbed.sh up 2 1

echo "== vm-start (vs virsh start)"
python3 bench/vm_start.py

echo "== migration (vs virsh migrate --live --p2p)"
VSPHERE_CTL=$PWD/.build/release/vsphere-ctl python3 bench/migration.py

echo "== storage (linked clone provisioning vs qemu-img create -b + virsh create; ping loss during migration)"
VSPHERE_CTL=$PWD/.build/release/vsphere-ctl python3 bench/storage.py

echo "== events (libvirt event on a host to the controller's event log)"
VSPHERE_CTL=$PWD/.build/release/vsphere-ctl python3 bench/events.py

# A long run, so only on request: SOAK_MINUTES=30 make bench
if [ -n "${SOAK_MINUTES:-}" ]; then
    echo "== agent-soak (the testbed agent's memory under its controller, ${SOAK_MINUTES} min)"
    python3 bench/agent_soak.py "$(cat "$VSPHERE_TESTBED/h1/agent.pid")" "$SOAK_MINUTES"
fi
