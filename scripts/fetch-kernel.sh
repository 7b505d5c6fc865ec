#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Provide a Linux 7.3.x source tree: KDIR if given (checked), else Debian's
# linux-source-7.3 package, fetched through a private apt state directory and
# unpacked once into the cache.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ -n "${KDIR:-}" ]; then
	[ -f "$KDIR/Makefile" ] && [ -d "$KDIR/rust/kernel" ] ||
		die "KDIR=$KDIR is not a Linux source tree (no Makefile or rust/kernel/)"
	v=$(kernel_version "$KDIR")
	case $v in
	"$KVER_WANT".*) note "using KDIR=$KDIR (Linux $v)" ;;
	*) die "KDIR=$KDIR is Linux $v, this project needs $KVER_WANT.x" \
		"unset KDIR to use Debian's linux-source-$KVER_WANT" ;;
	esac
	exit 0
fi

cur=$(kernel_src)
if [ -n "$cur" ] && [ -f "$cur/.unpacked" ]; then
	note "kernel source: $cur (cached)"
	exit 0
fi

pkg=linux-source-$KVER_WANT
mkdir -p "$CACHE/src" "$CACHE/debs"
private_apt "$(dpkg --print-architecture)" \
	"or pass KDIR=/path/to/linux-$KVER_WANT"
ver=$(apt-cache "${apt_opts[@]}" madison "$pkg" | awk -F' *\\| *' '{print $2}' |
	sort -V | tail -n 1)
[ -n "$ver" ] || die "no $pkg in trixie-backports or sid" \
	"pass KDIR=/path/to/linux-$KVER_WANT instead"
note "$pkg version $ver"

# apt-get download checks the .deb against the signed Release file.
(cd "$CACHE/debs" && run_logged "$LOGS/apt-download.log" "downloading $pkg $ver" \
	apt-get "${apt_opts[@]}" download "$pkg=$ver")
deb=$(ls -t "$CACHE/debs/${pkg}_"*.deb | head -n 1)

dest=$CACHE/src/linux-${ver//[~+:]/_}
rm -rf "$dest" "$dest.tmp"
mkdir -p "$dest.tmp"
unpack() {
	dpkg-deb --fsys-tarfile "$1" |
		tar -xO --wildcards './usr/src/linux-source-*.tar.xz' |
		tar -xJ -C "$2" --strip-components=1
}
run_logged "$LOGS/unpack.log" "unpacking into $dest" unpack "$deb" "$dest.tmp"
v=$(kernel_version "$dest.tmp")
case $v in
"$KVER_WANT".*) ;;
*) die "$deb unpacked to Linux $v, expected $KVER_WANT.x" ;;
esac
touch "$dest.tmp/.unpacked"
mv "$dest.tmp" "$dest"
echo "$dest" >"$CACHE/src/current"
note "kernel source: $dest (Linux $v)"
