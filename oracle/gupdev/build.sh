#!/bin/bash
# Builds gupdev.ko for one kernel: build.sh KERNEL_RELEASE|BUILD_DIR [OUT_DIR]
# KERNEL_RELEASE (e.g. 6.12.117+deb12-amd64) uses that release's headers: the tree the
# oracle fetches into its kernel cache (NUMASIM_KERNEL_CACHE, else $XDG_CACHE_HOME or
# ~/.cache /numasim/kernels), else an installed linux-headers package;
# BUILD_DIR is a configured kernel tree with Module.symvers (a self-built kernel or a
# headers tree).
# The module lands in OUT_DIR (default: out/RELEASE beside this script); its path is
# the last line printed. Exit 2: no headers/tree for that kernel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 KERNEL_RELEASE|BUILD_DIR [OUT_DIR]" >&2
	exit 2
fi
arg=$1
if [ -d "$arg" ]; then
	kdir=$(cd "$arg" && pwd)
	if [ ! -f "$kdir/Module.symvers" ] || [ ! -f "$kdir/include/config/kernel.release" ]; then
		echo "gupdev: $kdir is not a built kernel tree (no Module.symvers or include/config/kernel.release): run 'make' there first" >&2
		exit 2
	fi
	release=$(cat "$kdir/include/config/kernel.release")
else
	release=$arg
	cache=${NUMASIM_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/numasim/kernels}
	kdir=
	for d in "$cache/linux-headers-$release/usr/src/linux-headers-$release" \
		"/lib/modules/$release/build" "/usr/src/linux-headers-$release"; do
		if [ -f "$d/Makefile" ]; then kdir=$d; break; fi
	done
	if [ -z "$kdir" ]; then
		echo "gupdev: no headers for kernel $release in $cache or installed: a numasim run that needs the module fetches linux-headers-$release into the cache" >&2
		exit 2
	fi
fi
out=${2:-$here/out/$release}
mkdir -p "$out"
rm -f "$out"/*.c "$out"/*.h
cp "$here"/*.c "$here"/*.h "$here/Kbuild" "$out/"
# No BTF for the module: it would need pahole (dwarves), and nothing reads gupdev's types.
if ! make -s -C "$kdir" M="$out" CONFIG_DEBUG_INFO_BTF_MODULES= modules >"$out/build.log" 2>&1; then
	cat "$out/build.log" >&2
	echo "gupdev: build against $kdir failed (log: $out/build.log)" >&2
	exit 1
fi
if grep -q "warning:" "$out/build.log"; then
	cat "$out/build.log" >&2
fi
echo "$out/gupdev.ko"
