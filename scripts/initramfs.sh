#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Build the flavour's initramfs.cpio (in build/out/FLAVOUR/, off x86_64
# build/out/ARCH-FLAVOUR/): static busybox, /init and the command agent
# (tests/guest/), the flavour's modules in /modules, the guest helpers
# (tests/guest/*.c) in /bin and the project's kselftests in /kselftest, all
# for $ARCH. Rewritten only when its content changes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=${1:?usage: initramfs.sh release|debug}
dest=$(flavour_out "$flavour")
if [ -z "$CROSS_COMPILE" ]; then
	bb=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/bin/busybox$') ||
		die "busybox-static is not installed" "run make setup"
else
	"$TOP/scripts/fetch-busybox.sh"
	bb=$CACHE/busybox-$DEB_ARCH/bin/busybox
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,dev,proc,sys,tmp,modules}
cp "$bb" "$stage/bin/busybox"
install -m 755 "$TOP/tests/guest/init" "$stage/init"
install -m 755 "$TOP/tests/guest/agent" "$stage/agent"
cp "$dest"/*.ko "$stage/modules/" 2>/dev/null || true
# Test helpers, built static for the busybox guest.
for c in "$TOP"/tests/guest/*.c; do
	n=$(basename "$c" .c)
	"${CROSS_COMPILE}gcc" -static -O2 -Wall -Wextra -Werror -o "$stage/bin/$n" "$c" ||
		die "building the guest helper $c failed"
done
# This project's kselftests, built static with the kernel tree's lib.mk, in
# /kselftest/<name>/.
SRC=$(kernel_src)
for t in "$TOP"/tools/testing/selftests/*/Makefile; do
	[ -f "$t" ] || continue
	n=$(basename "$(dirname "$t")")
	mkdir -p "$stage/kselftest/$n"
	make -s -C "$SRC/tools/testing/selftests/$n" OUTPUT="$stage/kselftest/$n" \
		ARCH="$ARCH" CROSS_COMPILE="$CROSS_COMPILE" \
		LDFLAGS=-static CFLAGS="-Wall -Werror -O2" >"$LOGS/kselftest-$ARCH-$n.log" 2>&1 ||
		die "building kselftest $n failed" "log: $LOGS/kselftest-$ARCH-$n.log"
done
# Fixed order, owner and times, so equal input gives an equal archive.
find "$stage" -exec touch -h -d @0 {} +
(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
	cpio --null -o -H newc --owner 0:0 --reproducible --quiet) >"$stage.cpio"
if cmp -s "$stage.cpio" "$dest/initramfs.cpio"; then
	rm -f "$stage.cpio"
else
	mv "$stage.cpio" "$dest/initramfs.cpio"
fi
note "initramfs: ${dest#"$TOP"/}/initramfs.cpio ($(du -h "$dest/initramfs.cpio" | cut -f1))"
