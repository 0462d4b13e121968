#!/usr/bin/env bash
# make test: every tier in one `swift test` run, with a 2-host testbed up around it and torn down
# whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
export VSPHERE_TESTBED=${VSPHERE_TESTBED_DIR:-/var/lib/vsphere-testbed}
export VSPHERE_GUEST_DIR=$PWD/guest/out
export VSPHERE_TESTBED_SCRIPT=$PWD/scripts/testbed.sh
export VSPHERE_AGENT_BIN=$PWD/.build/debug/vsphere-agent
export VSPHERE_CTL_BIN=$PWD/.build/debug/vsphere-ctl
export VSPHERE_CONFIG=$VSPHERE_TESTBED/ctl.json
bash scripts/testbed.sh down >/dev/null 2>&1 || true
trap 'bash scripts/testbed.sh down' EXIT
bash scripts/testbed.sh up 2 1
set +e
swift test --skip-build --parallel 2>&1 | tee /tmp/vsphere-test.log | grep --line-buffered -v -E "^\[[0-9]+\/[0-9]+\]"
rc=${PIPESTATUS[0]}
exit "$rc"
