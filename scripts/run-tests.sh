#!/usr/bin/env bash
# make test: every tier, with a 2-host testbed and a throwaway PostgreSQL server up around it, both
# torn down whatever happens.
#   1. `swift test`: pure, libvirt test:///default, SQLite and PostgreSQL stores, agents and the
#      controller (SQLite) on the testbed.
#   2. On a testbed of two sites joined by the WAN link: the controller suite again, with the
#      controller's state in PostgreSQL, and the cross-site checks.
#   Between 1 and 2: API fuzzing of a throwaway agent (libvirt's test driver) and controller
#      (scripts/fuzz-api.sh): no 5xx, no crash.
#   3. On a 3-host testbed whose guests run on CPU 0 only: DRS and DPM (consolidation, the testbed
#      power driver, wake-up under load, maintenance mode).
set -euo pipefail
cd "$(dirname "$0")/.."
export VSPHERE_TESTBED=${VSPHERE_TESTBED_DIR:-/var/lib/vsphere-testbed}
export VSPHERE_GUEST_DIR=$PWD/guest/out
export VSPHERE_TESTBED_SCRIPT=$PWD/scripts/testbed.sh
export VSPHERE_AGENT_BIN=$PWD/.build/debug/vsphere-agent
export VSPHERE_CTL_BIN=$PWD/.build/debug/vsphere-ctl
export VSPHERE_CONFIG=$VSPHERE_TESTBED/ctl.json
PG_DIR=/tmp/vsphere-test-postgres
PG_PORT=${VSPHERE_TEST_PG_PORT:-55432}

# swift_test LOG ARGS...: runs the built tests, keeps the full output in LOG, shows it without build
# progress lines, and returns swift test's own status.
swift_test() {
    local log=$1 rc
    shift
    set +e
    swift test --skip-build "$@" 2>&1 | tee "$log" | grep --line-buffered -v -E "^\[[0-9]+/[0-9]+\]"
    rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

cleanup() {
    bash scripts/testbed.sh down || true
    bash scripts/pg-test-server.sh stop "$PG_DIR" || true
}
bash scripts/testbed.sh down >/dev/null 2>&1 || true
bash scripts/pg-test-server.sh stop "$PG_DIR" >/dev/null 2>&1 || true
trap cleanup EXIT
export VSPHERE_TEST_POSTGRES=$(bash scripts/pg-test-server.sh start "$PG_DIR" "$PG_PORT")
bash scripts/testbed.sh up 2 1

swift_test /tmp/vsphere-test.log --parallel

echo "== API fuzzing (schemathesis, both OpenAPI documents)"
bash scripts/fuzz-api.sh

echo "== two sites; the controller suite with its state in PostgreSQL"
bash scripts/testbed.sh down
VSPHERE_TESTBED_DATABASE="$VSPHERE_TEST_POSTGRES" bash scripts/testbed.sh up 2 2
grep -q -- "--database postgres://" "$VSPHERE_TESTBED/controller/controller.cmd"
swift_test /tmp/vsphere-test-pg.log --filter "ControllerOnTestbed|TwoSites|VMotionAcrossSites|OverlayAcrossSites"

echo "== three hosts, guests on CPU 0: DRS and DPM"
bash scripts/testbed.sh down
GUEST_CPUS=0 bash scripts/testbed.sh up 3 1
swift_test /tmp/vsphere-test-drs.log --filter "DRSOnTestbed"
