# vsphere: a virtual datacenter OS on Linux/KVM. See README.md.
SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)
SWIFT ?= swift
HOSTS ?= 2
SITES ?= 1
CONFIG ?= debug
BIN := .build/$(CONFIG)

.PHONY: all deps build release build-tests guest-image test unit-test integration-test testbed testbed-down demo demo-down bench fmt clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	$(SWIFT) build -c $(CONFIG)

# What gets installed on hosts (docs/operations.md): a plain release build, the Swift runtime linked in.
release: deps
	@bash scripts/build-release.sh

build-tests: deps
	$(SWIFT) build --build-tests

guest-image: deps
	@bash guest/build.sh guest/out

# Everything: unit tests, libvirt test:///default tests, and the real tier on a 2-host testbed of TCG
# guests. The testbed is torn down whatever happens.
test: build-tests guest-image
	@bash scripts/run-tests.sh

testbed: build guest-image
	@bash scripts/testbed.sh up $(HOSTS) $(SITES)

testbed-down:
	@bash scripts/testbed.sh down

demo: release guest-image
	@bash scripts/demo.sh up

demo-down:
	@bash scripts/demo.sh down

bench: build guest-image
	@bash bench/run.sh

clean:
	rm -rf .build guest/out
