#!/bin/bash
# Release build of the three daemons and the CLI, with the Swift runtime and Foundation linked in
# (one file to install on a host, and fewer pages touched at start). Every object gets its functions
# in sections of their own (Swift and C alike), so the agent's linker can lay out the code it runs
# together (Package.swift, agentReleaseLinking; docs/benchmarks.md, vm-start). Products: .build/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
FLAGS=(-c release --static-swift-stdlib -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections -Xcc -fdata-sections)
if [ $# -eq 0 ]; then set -- vsphere-agent vsphere-controller vsphere-ctl; fi
# The agent's layout files are linker inputs SwiftPM does not track: relink when one is newer.
agent=.build/release/vsphere-agent
for input in scripts/agent.order scripts/agent-text.ld; do
    if [ -e "$agent" ] && [ "$input" -nt "$agent" ]; then rm -f "$agent"; fi
done
for product in "$@"; do
    swift build "${FLAGS[@]}" --product "$product"
done
# The agent does without full Foundation (docs/architecture.md, Decisions): an import of Foundation
# anywhere in its targets or a dependency's trait would link CoreFoundation and ICU back in.
if [[ " $* " == *" vsphere-agent "* ]] && nm "$agent" | grep -qE ' (__CFInitialize|swift_ucol_open)$'; then
    echo "build-release: vsphere-agent links CoreFoundation/ICU: a target it depends on imports Foundation" >&2
    exit 1
fi
