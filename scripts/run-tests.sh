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
#   0. First, the README's quick start as a new user runs it (scripts/demo-check.sh): `make demo` (the
#      release build of all three daemons, on this machine's own libvirtd and cgroup layout), both VMs
#      running, `make demo-down` leaving nothing. Then the release daemons on a real systemd host
#      (scripts/systemd-host-check.sh: a Debian 12 container with systemd as PID 1).
# Every phase must run at least its minimum number of tests (a filter that matches nothing fails) and
# ends within its time limit.
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

# swift_test LOG MIN_PASSED LIMIT_S ARGS...: runs the built tests under a time limit, keeps the full output
# in LOG, shows it without build progress lines; fails unless swift test succeeded and at least MIN_PASSED
# tests passed (a skipped test does not count).
swift_test() {
    local log=$1 min=$2 limit=$3 rc passed
    shift 3
    set +e
    timeout --kill-after=30 "$limit" swift test --skip-build "$@" 2>&1 | tee "$log" | grep --line-buffered -v -E "^\[[0-9]+/[0-9]+\]"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" = 124 ] && echo "run-tests: swift test $* ran out of its $limit s" >&2
    [ "$rc" = 0 ] || return "$rc"
    passed=$(grep -E " Test .* passed after [0-9.]+ seconds" "$log" | grep -cv " Test run with " || true)
    if [ "$passed" -lt "$min" ]; then
        echo "run-tests: swift test $* passed $passed tests, fewer than the $min this phase must run" >&2
        return 1
    fi
    echo "run-tests: $passed tests passed (at least $min expected)"
}

# VSPHERE_TEST_FROM=PHASE starts at that phase (demo, systemd, main, fuzz, pg, drs): for a developer
# resuming after a fix. CI runs them all.
phases=(demo systemd main fuzz pg drs)
from=${VSPHERE_TEST_FROM:-demo}
[[ " ${phases[*]} " == *" $from "* ]] || { echo "run-tests: VSPHERE_TEST_FROM must be one of ${phases[*]}" >&2; exit 2; }
reached=no
want() { [ "$1" = "$from" ] && reached=yes; [ $reached = yes ]; }

cleanup() {
    bash scripts/testbed.sh down || true
    bash scripts/pg-test-server.sh stop "$PG_DIR" || true
}
bash scripts/testbed.sh down >/dev/null 2>&1 || true
bash scripts/pg-test-server.sh stop "$PG_DIR" >/dev/null 2>&1 || true
trap cleanup EXIT

if want demo; then
    echo "== the quick start: make demo, make demo-down (release build, this machine's libvirtd)"
    timeout --kill-after=30 2400 bash scripts/demo-check.sh
fi

if want systemd; then
    echo "== a real systemd host: the units as installed, a VM in a resource pool's slice"
    timeout --kill-after=30 900 bash scripts/systemd-host-check.sh
fi

export VSPHERE_TEST_POSTGRES=$(bash scripts/pg-test-server.sh start "$PG_DIR" "$PG_PORT")
if want main; then
    bash scripts/testbed.sh up 2 1
    swift_test /tmp/vsphere-test.log 200 1800 --parallel
fi

if want fuzz; then
    echo "== API fuzzing (schemathesis, both OpenAPI documents)"
    timeout --kill-after=30 900 bash scripts/fuzz-api.sh
fi

if want pg; then
    echo "== two sites; the controller suite with its state in PostgreSQL"
    bash scripts/testbed.sh down
    # An empty store: the store tests leave their last rows (specs no controller could decode) behind.
    bash scripts/pg-test-server.sh reset "$PG_DIR" "$PG_PORT"
    VSPHERE_TESTBED_DATABASE="$VSPHERE_TEST_POSTGRES" bash scripts/testbed.sh up 2 2
    grep -q -- "--database postgres://" "$VSPHERE_TESTBED/controller/controller.cmd"
    swift_test /tmp/vsphere-test-pg.log 10 900 --filter "ControllerOnTestbed|TwoSites|VMotionAcrossSites|OverlayAcrossSites"
fi

if want drs; then
    echo "== three hosts, guests on CPU 0: DRS and DPM"
    bash scripts/testbed.sh down
    GUEST_CPUS=0 bash scripts/testbed.sh up 3 1
    swift_test /tmp/vsphere-test-drs.log 2 900 --filter "DRSOnTestbed"
fi
