#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Install this repository into the kernel tree: new files under drivers/, rust/,
# samples/, Documentation/ and tools/ are copied, edits to upstream files are
# applied from patches/. Only files whose content changed are written, so
# Kbuild rebuilds only what really changed, also after a fresh clone. Files
# that left the repository leave the tree; upstream files whose patch went
# away get their pristine content back.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# The repository to install; another one only for the overlay's own tests.
FROM=${OVERLAY_FROM:-$TOP}
SRC=$(kernel_src)
[ -n "$SRC" ] || die "no kernel source yet" "run scripts/fetch-kernel.sh"
state=$CACHE/overlay/$(printf '%s' "$SRC" | sha1sum | cut -c1-12)
mkdir -p "$state/pristine"
touch "$state/files" "$state/patched"

# put SRCFILE DEST: write DEST only when its content differs.
put() {
	if ! cmp -s "$1" "$2"; then
		mkdir -p "$(dirname "$2")"
		cp "$1" "$2"
		note "updated ${2#"$SRC"/}"
	fi
}

cd "$FROM"
git ls-files --cached --others --exclude-standard -- \
	drivers rust samples Documentation tools | sort -u |
	while read -r f; do [ -f "$f" ] && echo "$f"; done >"$state/files.new"

# New files only: an upstream file is changed through patches/, never
# overwritten, or a deleted repository file could not restore it.
while read -r f; do
	if [ -e "$SRC/$f" ] && ! grep -qxF "$f" "$state/files"; then
		die "$f exists upstream; change it with a patch in patches/, not a copy"
	fi
	put "$FROM/$f" "$SRC/$f"
done <"$state/files.new"
comm -23 "$state/files" "$state/files.new" | while read -r f; do
	rm -f "$SRC/$f"
	note "removed $f"
done
mv "$state/files.new" "$state/files"

# Patches: rebuild every patched file from its pristine copy in a scratch
# directory, then copy the results that differ from the tree.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
shopt -s nullglob
patches=("$FROM"/patches/*.patch)
for p in "${patches[@]}"; do
	sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$p"
done | sort -u >"$state/patched.new"
while read -r f; do
	[ -f "$state/pristine/$f" ] || {
		[ -f "$SRC/$f" ] || die "patched file $f is not in the kernel tree"
		mkdir -p "$(dirname "$state/pristine/$f")"
		cp "$SRC/$f" "$state/pristine/$f"
	}
	mkdir -p "$(dirname "$scratch/$f")"
	cp "$state/pristine/$f" "$scratch/$f"
done <"$state/patched.new"
for p in "${patches[@]}"; do
	patch -s -p1 --fuzz=0 -d "$scratch" --no-backup-if-mismatch <"$p" >"$scratch/.log" 2>&1 ||
		die "patches/${p##*/} does not apply to Linux $(kernel_version "$SRC")" \
			"$(cat "$scratch/.log")"
done
while read -r f; do
	put "$scratch/$f" "$SRC/$f"
done <"$state/patched.new"
comm -23 "$state/patched" "$state/patched.new" | while read -r f; do
	put "$state/pristine/$f" "$SRC/$f"
	rm -f "$state/pristine/$f"
done
mv "$state/patched.new" "$state/patched"
step "overlay installed into $SRC ($(wc -l <"$state/files") files, ${#patches[@]} patches)"
