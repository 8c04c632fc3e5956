#!/bin/bash
# Boots one Debian kernel under QEMU (TCG, 2 NUMA nodes) with the gupdev test as /init:
#   test/boot.sh KERNEL_RELEASE [OUT_DIR]     e.g. 6.12.117+deb12-amd64, 6.1.0-57-amd64
# Needs: linux-headers-RELEASE, gcc, cpio, qemu-system-x86. The kernel image comes from
# KIMG_DIR/linux-image-RELEASE, by default numasim's kernel cache ($NUMASIM_KERNEL_CACHE, else
# $XDG_CACHE_HOME/numasim/kernels, else ~/.cache/numasim/kernels), fetched with
# apt-get download when missing.
# GUPDEV_EXTRA=PROGRAM (static) also runs PROGRAM in the guest after the checks.
# Prints the guest's gupdev-result lines; OUT_DIR/console.log has the whole console.
# Exit 0: guest ran every check; 1: a check failed or the guest died; 2: missing parts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
release=${1:?usage: $0 KERNEL_RELEASE [OUT_DIR]}
out=${2:-$here/out/boot-$release}
kimg=${KIMG_DIR:-${NUMASIM_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/numasim/kernels}}
for tool in gcc cpio gzip qemu-system-x86_64 timeout; do
	command -v "$tool" >/dev/null || { echo "gupdev: $tool missing (apt-get install gcc cpio qemu-system-x86)" >&2; exit 2; }
done

# The kernel cache's layout, shared with `numasim kernel`: packages in debs/, each unpacked
# into a directory named after it.
pkg=linux-image-$release
vmlinuz=$kimg/$pkg/boot/vmlinuz-$release
if [ ! -f "$vmlinuz" ]; then
	mkdir -p "$kimg/debs"
	(
		flock 9
		if [ ! -f "$vmlinuz" ]; then
			(cd "$kimg/debs" && ls "$pkg"_*.deb >/dev/null 2>&1) || (cd "$kimg/debs" && apt-get download "$pkg" >&2) ||
				{ echo "gupdev: cannot download $pkg" >&2; exit 2; }
			rm -rf "$kimg/.$pkg.tmp" && mkdir "$kimg/.$pkg.tmp"
			dpkg-deb -x "$kimg/debs/$pkg"_*.deb "$kimg/.$pkg.tmp"
			rm -rf "${kimg:?}/$pkg" && mv "$kimg/.$pkg.tmp" "$kimg/$pkg"
		fi
	) 9>"$kimg/.gupdev-lock"
fi

ko=$("$here/build.sh" "$release" | tail -1)
mkdir -p "$out/root/proc" "$out/root/sys" "$out/root/dev"
gcc -static -O2 -Wall -Wextra -Werror -pthread -o "$out/root/init" "$here/test/gupdev_test.c"
cp "$ko" "$out/root/gupdev.ko"
rm -f "$out/root/extra"
[ -n "${GUPDEV_EXTRA:-}" ] && cp "$GUPDEV_EXTRA" "$out/root/extra"
(cd "$out/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.gz"

start=$(date +%s)
rc=0
timeout 600 qemu-system-x86_64 -accel tcg -machine q35 -cpu max -smp 4,sockets=2,cores=2 -m 2G \
	-object memory-backend-ram,id=m0,size=1024M -object memory-backend-ram,id=m1,size=1024M \
	-numa node,nodeid=0,cpus=0-1,memdev=m0 -numa node,nodeid=1,cpus=2-3,memdev=m1 \
	-numa dist,src=0,dst=1,val=20 -nographic -no-reboot \
	-kernel "$vmlinuz" -initrd "$out/initramfs.gz" \
	-append "console=ttyS0 panic=-1 oops=panic quiet loglevel=5" >"$out/console.log" 2>&1 || rc=$?
echo "gupdev: $release booted and ran in $(( $(date +%s) - start )) s (qemu exit $rc)" >&2
grep -ao "gupdev-.*" "$out/console.log" | tr -d "\r" >"$out/results.txt" || true
cat "$out/results.txt"
if grep -aqE "WARNING:|BUG:|Oops|Call Trace" "$out/console.log"; then
	echo "gupdev: the kernel warned or oopsed; console:" >&2
	grep -aE -A30 "WARNING:|BUG:|Oops" "$out/console.log" | head -n 60 >&2
	exit 1
fi
if ! grep -q "^gupdev-done 0 failed" "$out/results.txt"; then
	echo "gupdev: guest checks failed or the guest died; console tail:" >&2
	tail -n 40 "$out/console.log" >&2
	exit 1
fi
