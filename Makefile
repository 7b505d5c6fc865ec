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
# BENCH_ARGS="--reps 3 --size-mib 512" (make bench).

SHELL := /bin/bash
.DEFAULT_GOAL := help
S := scripts
PY := build/venv/bin/python
DRIVER ?= rust
TESTS ?= tests
export KDIR LLVM_SUFFIX RB_ACCEL

help:
	@sed -n '3,17s/^# \{0,1\}//p' Makefile

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
		$(PY) -m pytest $(TESTS)

clean:
	rm -rf build

.PHONY: help setup source release debug run bench shell check clean
