# SPDX-License-Identifier: GPL-2.0
# Shared shell helpers for the project's scripts: paths, progress and errors.
# Sourced, never executed.

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCH=${ARCH:-x86_64}
KVER_WANT=${KVER_WANT:-7.3}
# Everything downloaded or built outside the checkout lives here, so a fresh
# clone reuses it.
CACHE=${RUST_BALLOON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rust-balloon}
BUILD=$TOP/build
OUT=$BUILD/out
LOGS=$BUILD/logs
LLVM_SUFFIX=${LLVM_SUFFIX:--19}

mkdir -p "$CACHE" "$OUT" "$LOGS"

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
	printf 'ERROR: %s\n' "$1" >&2
	shift
	for l in "$@"; do printf '       %s\n' "$l" >&2; done
	exit 1
}

# run_logged LOG DESCRIPTION CMD...: run a long step, its output in LOG; on
# failure show the tail of the log and say where the rest is.
run_logged() {
	local log=$1 what=$2
	shift 2
	local t0=$SECONDS
	step "$what (log: ${log#"$TOP"/})"
	if ! "$@" >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		die "$what failed" "full log: $log"
	fi
	note "done in $((SECONDS - t0)) s"
}

# The kernel tree to build: KDIR if the user gave one, else the cached copy
# of Debian's linux-source package (see fetch-kernel.sh).
kernel_src() {
	if [ -n "${KDIR:-}" ]; then
		echo "$KDIR"
	else
		cat "$CACHE/src/current" 2>/dev/null || true
	fi
}

# kernel_version DIR: "7.3.4" from a tree's top-level Makefile.
kernel_version() {
	awk -F' *= *' '/^VERSION =/{v=$2} /^PATCHLEVEL =/{p=$2}
		/^SUBLEVEL =/{s=$2} END{print v "." p "." s}' "$1/Makefile"
}
