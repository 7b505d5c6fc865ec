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

# The guest architecture: x86_64 (QEMU q35, 4 KiB pages) or arm64 (QEMU virt,
# 64 KiB pages). The kernel is built with clang, which targets both; the
# guest's user space (busybox, the helpers, the kselftests) is C built with
# the architecture's GNU cross compiler, static.
case $ARCH in
x86_64)
	KIMAGE=bzImage KIMAGE_PATH=arch/x86/boot/bzImage
	CROSS_COMPILE= DEB_ARCH=amd64
	;;
arm64)
	KIMAGE=Image KIMAGE_PATH=arch/arm64/boot/Image
	CROSS_COMPILE=aarch64-linux-gnu- DEB_ARCH=arm64
	;;
*)
	printf 'ERROR: ARCH=%s: this project builds x86_64 or arm64 guests\n' "$ARCH" >&2
	exit 1
	;;
esac

# flavour_out FLAVOUR: where a flavour's kernel, modules and initramfs go,
# build/out/FLAVOUR for x86_64 and build/out/ARCH-FLAVOUR otherwise.
flavour_out() {
	if [ "$ARCH" = x86_64 ]; then echo "$OUT/$1"; else echo "$OUT/$ARCH-$1"; fi
}

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

# private_apt DEB_ARCH [HINT]: point apt_opts at a private apt state in the
# cache for Debian's trixie-backports and sid, packages for DEB_ARCH, and
# update its lists. apt-get download checks every .deb against the signed
# Release file. The mirror is the one this machine's apt already uses: its
# host name is read from /etc/apt and goes only into the cache's apt state
# and build/logs/, never into the repository.
private_apt() {
	local arch=$1 hint=${2:-}
	apt_dir=$CACHE/apt
	[ "$arch" = "$(dpkg --print-architecture)" ] || apt_dir=$CACHE/apt-$arch
	mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" \
		"$apt_dir/empty"
	local mirror
	mirror=$(
		{
			cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
				awk 'tolower($1)=="uris:" {for (i=2;i<=NF;i++) print $i}' || true
			cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
				awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i !~ /=/) {print $i; break}}' || true
		} | grep -E '/debian/?$' | head -n 1 || true
	)
	[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt" \
		"add a 'deb <mirror>/debian ...' line${hint:+, $hint}"
	local keyring=/usr/share/keyrings/debian-archive-keyring.gpg suite
	for suite in trixie-backports sid; do
		echo "deb [signed-by=$keyring] $mirror $suite main"
	done >"$apt_dir/sources.list"
	apt_opts=(
		-o "Dir::Etc::SourceList=$apt_dir/sources.list"
		-o "Dir::Etc::SourceParts=$apt_dir/empty"
		-o "Dir::Etc::Preferences=$apt_dir/empty/none"
		-o "Dir::Etc::PreferencesParts=$apt_dir/empty"
		-o "Dir::State=$apt_dir/state"
		-o "Dir::State::status=/var/lib/dpkg/status"
		-o "Dir::Cache=$apt_dir/cache"
		-o "APT::Architecture=$arch"
		-o "APT::Architectures::=$arch"
		-o "Debug::NoLocking=1"
		-o "APT::Get::List-Cleanup=0"
	)
	run_logged "$LOGS/apt-update-$arch.log" "apt-get update (private state in $apt_dir)" \
		apt-get "${apt_opts[@]}" update
}
