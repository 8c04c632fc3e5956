#!/bin/bash
# CI for gupdev: installs the headers of both oracle kernels and builds gupdev.ko for
# each (warnings are errors). With --boot it also boots each kernel under QEMU and runs
# the guest test (test/boot.sh; 30-36 s per kernel under TCG, plus the image download).
# Measured on 2 cores: 35 s with the packages installed; on a fresh machine add about
# 10 s of download (133 MB, the 6.12 image included) and about 60 s of unpacking.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
boot=0
[ "${1:-}" = "--boot" ] && boot=1
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
mapfile -t releases < <("$here/kernels.sh")
pkgs=(make gcc)
for r in "${releases[@]}"; do pkgs+=("linux-headers-$r"); done
[ $boot = 1 ] && pkgs+=(cpio qemu-system-x86)
# The 6.12 headers depend on the 6.12 image; INITRD=No skips building an initramfs
# for it (about 100 s on 2 cores), which nothing here boots.
INITRD=No apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
for r in "${releases[@]}"; do
	start=$(date +%s)
	ko=$("$here/build.sh" "$r" | tail -n 1)
	if grep -q "warning:" "$(dirname "$ko")/build.log"; then
		echo "gupdev: warnings building for $r" >&2
		exit 1
	fi
	echo "gupdev: built $ko in $(( $(date +%s) - start )) s"
	if [ $boot = 1 ]; then
		"$here/test/boot.sh" "$r" >/dev/null
		echo "gupdev: guest test passed on $r"
	fi
done
