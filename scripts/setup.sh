#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Install what the project needs, idempotently; quick when nothing is missing.
# Every other make target runs this first.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BINDGEN_VERSION=0.73.2
packages=(
	clang-19 lld-19 llvm-19 libclang-19-dev
	make flex bison bc cpio xz-utils patch perl libelf-dev libssl-dev
	qemu-system-x86 busybox-static ccache python3-venv git gcc libc6-dev
)
# arm64 guests: QEMU's virt machine and a cross compiler for the guest's
# user space. Their busybox is Debian's busybox-static:arm64, fetched into
# the cache by initramfs.sh.
[ "$ARCH" = arm64 ] &&
	packages+=(qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	sudo=()
	[ "$(id -u)" = 0 ] || sudo=(sudo)
	run_logged "$LOGS/setup-apt.log" "installing Debian packages: ${missing[*]}" \
		bash -c '"$@" apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive "$@" apt-get install -y -q --no-install-recommends '"${missing[*]}" \
		_ "${sudo[@]}" ||
		die "apt-get could not install ${missing[*]}" "install them by hand and re-run"
fi

command -v rustup >/dev/null ||
	die "rustup not found" "install the Rust toolchain with rustup (https://rustup.rs)"
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
	run_logged "$LOGS/setup-rust-src.log" "rustup component add rust-src" \
		rustup component add rust-src
fi

if [ "$(bindgen --version 2>/dev/null)" != "bindgen $BINDGEN_VERSION" ]; then
	run_logged "$LOGS/setup-bindgen.log" "cargo install bindgen-cli $BINDGEN_VERSION (about 1 min)" \
		cargo install --locked --force bindgen-cli --version "$BINDGEN_VERSION"
fi

venv=$BUILD/venv
want=$(sha1sum <"$TOP/tests/requirements.txt" | cut -c1-40)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]; then
	rm -rf "$venv"
	run_logged "$LOGS/setup-venv.log" "Python venv in ${venv#"$TOP"/} (tests/requirements.txt)" \
		bash -c "python3 -m venv '$venv' && '$venv/bin/pip' install -q -r '$TOP/tests/requirements.txt'"
	echo "$want" >"$venv/.requirements"
fi
note "set-up complete"
