#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Configure and build one kernel flavour for $ARCH out of tree, then copy its
# artifacts to build/out/FLAVOUR/ (build/out/ARCH-FLAVOUR/ off x86_64).
#   release: tinyconfig + .config.fragment + .config.$ARCH.fragment
#            + .config.release.fragment (the function profiler)
#                                                      (make run, make bench)
#   debug:   tinyconfig + .config.fragment + .config.$ARCH.fragment
#            + .config.debug.fragment (.config.ARCH-debug.fragment where one
#            exists), built with CLIPPY=1 and CONFIG_WERROR   (make check)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavour=${1:?usage: build-kernel.sh release|debug}
SRC=$(kernel_src)
O=$CACHE/build-$ARCH-$flavour
dest=$(flavour_out "$flavour")
mkdir -p "$O" "$dest"
export CCACHE_DIR=$CACHE/ccache

frags=("$TOP/.config.fragment" "$TOP/.config.$ARCH.fragment")
kmake=(make -C "$SRC" O="$O" ARCH="$ARCH" LLVM="$LLVM_SUFFIX"
	CC="ccache clang$LLVM_SUFFIX" -j"$(($(nproc) + 1))")
[ "$flavour" = debug ] && kmake+=(CLIPPY=1)
if [ -f "$TOP/.config.$ARCH-$flavour.fragment" ]; then
	frags+=("$TOP/.config.$ARCH-$flavour.fragment")
else
	frags+=("$TOP/.config.$flavour.fragment")
fi

# Regenerate .config only when its inputs changed, and keep the old file
# (and its time) when the new one is the same: a .config newer than the
# build makes Kconfig rewrite include/generated/, and every Rust crate is
# rebuilt.
want=$(cat "${frags[@]}" "$0" | sha1sum | cut -c1-40)-$(kernel_version "$SRC")
if [ "$(cat "$O/.fragments-hash" 2>/dev/null)" != "$want" ] || [ ! -f "$O/.config" ]; then
	rm -f "$O/.config.prev"
	[ -f "$O/.config" ] && cp -p "$O/.config" "$O/.config.prev"
	configure() {
		"${kmake[@]}" tinyconfig &&
			KCONFIG_CONFIG="$O/.config" "$SRC/scripts/kconfig/merge_config.sh" \
				-m -O "$O" "$O/.config" "${frags[@]}" &&
			"${kmake[@]}" olddefconfig
	}
	run_logged "$LOGS/config-$ARCH-$flavour.log" \
		"configuring $ARCH $flavour kernel (tinyconfig + ${frags[*]##*/})" configure
	# Kconfig drops options whose dependencies are unmet without a word: check
	# every requested option against the result.
	bad=$(awk '
		function got(k) { return (k in val) ? val[k] : "n" }
		FNR == NR {
			if (match($0, /^CONFIG_[A-Za-z0-9_]+=/))
				val[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1)
			next
		}
		/^CONFIG_[A-Za-z0-9_]+=/ {
			i = index($0, "="); k = substr($0, 1, i - 1); v = substr($0, i + 1)
			if (got(k) != v) print "  " k ": wanted " v ", got " got(k)
		}
		/^# CONFIG_[A-Za-z0-9_]+ is not set/ {
			if (got($2) != "n") print "  " $2 ": wanted n, got " got($2)
		}
		' "$O/.config" "${frags[@]}")
	if [ -n "$bad" ]; then
		rm -f "$O/.fragments-hash"
		die "kernel config: requested options did not come out as requested:" "$bad" \
			"see $O/.config and $LOGS/config-$ARCH-$flavour.log"
	fi
	if [ -f "$O/.config.prev" ] && cmp -s "$O/.config" "$O/.config.prev"; then
		mv "$O/.config.prev" "$O/.config"
		note "configuration unchanged: the build keeps its generated files"
	fi
	rm -f "$O/.config.prev"
	echo "$want" >"$O/.fragments-hash"
fi

run_logged "$LOGS/build-$ARCH-$flavour.log" "building $ARCH $flavour kernel in $O" \
	"${kmake[@]}" "$KIMAGE" modules

cp_changed() { cmp -s "$1" "$2" || cp "$1" "$2"; }
cp_changed "$O/$KIMAGE_PATH" "$dest/$KIMAGE"
cp_changed "$O/.config" "$dest/.config"
rm -f "$dest"/*.ko
find "$O" -name '*.ko' -not -path '*/.tmp*' -print0 |
	while IFS= read -r -d '' ko; do cp "$ko" "$dest/"; done
note "artifacts in ${dest#"$TOP"/}: $KIMAGE, .config, $(ls "$dest" | grep -c '\.ko$') modules"
