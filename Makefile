# SPDX-License-Identifier: GPL-2.0
#
# Rust memory-balloon driver for Linux 7.3: build, run and test under QEMU.
#
#   make run      boot a guest, drive the balloon, print a table (release kernel)
#   make check    lint, boot tests, KUnit (debug kernel)
#   make bench    C vs Rust driver: throughput, latency, migration, size (release kernel)
#   make shell    interactive guest console, QMP socket printed (release kernel)
#   make setup    install what is missing (implied by every target)
#   make release / make debug   build one kernel flavour and its initramfs
#   make clean    remove build/ (the kernel cache stays, see README)
#
# Variables: KDIR=/path/to/linux-7.3 (use your tree), DRIVER=c|rust (make run),
# TESTS="tests/test_balloon.py -k unload" (make check), RB_ACCEL=kvm|tcg,
# BENCH_ARGS="--reps 3 --size-mib 512" (make bench), ARCH=x86_64|arm64 (the
# guest: arm64 is QEMU's virt machine with 64 KiB pages and two NUMA nodes;
# make check ARCH=arm64 runs the arm64 lane, TESTS_arm64).

SHELL := /bin/bash
.DEFAULT_GOAL := help
S := scripts
PY := build/venv/bin/python
DRIVER ?= rust
ARCH ?= x86_64
# The arm64 lane: what 64 KiB pages, the virt machine and NUMA change. The
# rest of the suite tests code that is the same on every architecture.
TESTS_arm64 := tests/test_kunit.py tests/test_balloon.py tests/test_numa.py \
	tests/test_free_page_reporting.py tests/test_absurd_target.py \
	tests/test_sim_device.py::test_largest_target_inflates
TESTS ?= $(or $(TESTS_$(ARCH)),tests)
REPORT := build/report$(if $(filter-out x86_64,$(ARCH)),-$(ARCH)).xml
export KDIR LLVM_SUFFIX RB_ACCEL ARCH
export RB_ARCH := $(ARCH)

help:
	@sed -n '3,20s/^# \{0,1\}//p' Makefile

setup:
	@$(S)/setup.sh

source: setup
	@$(S)/fetch-kernel.sh
	@$(S)/overlay.sh

release debug: source
	@$(S)/build-kernel.sh $@
	@$(S)/initramfs.sh $@

run: release
	@$(PY) $(S)/demo.py --driver $(DRIVER)

bench: release
	@$(PY) $(S)/bench.py $(BENCH_ARGS)

shell: release
	@$(PY) $(S)/shell.py

check: debug
	@. $(S)/lib.sh; src=$$(kernel_src); \
	RB_KSRC=$$src RB_KBUILD=$$CACHE/build-$$ARCH-debug RB_FLAVOUR=debug \
		$(PY) -m pytest --junitxml=$(REPORT) $(TESTS)

clean:
	rm -rf build

.PHONY: help setup source release debug run bench shell check clean
