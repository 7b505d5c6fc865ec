#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Provide the static busybox of a guest whose architecture is not the host's:
# Debian's busybox-static for $DEB_ARCH, fetched through a private apt state
# (see private_apt in lib.sh) and unpacked once into
# $CACHE/busybox-$DEB_ARCH/. An x86_64 guest uses the host's busybox-static.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dest=$CACHE/busybox-$DEB_ARCH
[ -x "$dest/bin/busybox" ] && exit 0

pkg=busybox-static
private_apt "$DEB_ARCH"
ver=$(apt-cache "${apt_opts[@]}" madison "$pkg" | awk -F' *\\| *' '{print $2}' |
	sort -V | tail -n 1)
[ -n "$ver" ] || die "no $pkg:$DEB_ARCH in trixie-backports or sid"
debs=$CACHE/debs-$DEB_ARCH
mkdir -p "$debs"
(cd "$debs" && run_logged "$LOGS/apt-download-$DEB_ARCH.log" \
	"downloading $pkg:$DEB_ARCH $ver" apt-get "${apt_opts[@]}" download "$pkg:$DEB_ARCH=$ver")
# apt-get download names the file after the version, its epoch colon escaped.
deb=$debs/${pkg}_${ver//:/%3a}_$DEB_ARCH.deb
[ -f "$deb" ] || die "apt-get download left no $deb" "log: $LOGS/apt-download-$DEB_ARCH.log"

rm -rf "$dest.tmp" "$dest.deb"
dpkg-deb -x "$deb" "$dest.deb"
bb=
for f in "$dest.deb"/usr/bin/busybox "$dest.deb"/bin/busybox; do
	[ "$(head -c 4 "$f" 2>/dev/null)" = $'\x7fELF' ] && bb=$f && break
done
[ -n "$bb" ] || die "$deb has no busybox executable in /usr/bin or /bin"
# ELF e_machine (16 bits at offset 18) must be the guest's: EM_AARCH64 is 183.
want_machine=$(case $DEB_ARCH in arm64) echo 183 ;; amd64) echo 62 ;; esac)
got_machine=$(od -An -t u2 -j 18 -N 2 "$bb" | tr -d ' ')
[ "$got_machine" = "$want_machine" ] ||
	die "$deb's busybox is for ELF machine $got_machine, not $DEB_ARCH ($want_machine)"
mkdir -p "$dest.tmp/bin"
cp "$bb" "$dest.tmp/bin/busybox"
rm -rf "$dest" "$dest.deb"
mv "$dest.tmp" "$dest"
note "busybox for $DEB_ARCH: $dest/bin/busybox ($pkg $ver)"
