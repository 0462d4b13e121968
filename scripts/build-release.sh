#!/bin/bash
# Release build of the three daemons and the CLI, with the Swift runtime linked in (one file to
# install on a host, nothing looked up in the runtime's shared libraries at start). Products:
# .build/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
swift build -c release --static-swift-stdlib
# The agent does without full Foundation (docs/architecture.md, Decisions): an import of Foundation
# anywhere in its targets or a dependency's trait would link CoreFoundation and ICU back in.
if nm .build/release/vsphere-agent | grep -qE ' (__CFInitialize|swift_ucol_open)$'; then
    echo "build-release: vsphere-agent links CoreFoundation/ICU: a target it depends on imports Foundation" >&2
    exit 1
fi
