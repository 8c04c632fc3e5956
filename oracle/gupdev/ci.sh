#!/bin/bash
# CI for gupdev: installs the headers of both oracle kernels and builds gupdev.ko for
# each (warnings are errors). With --boot it also boots each kernel under QEMU and runs
# the guest test (test/boot.sh; about 15-35 s per kernel under TCG, plus the image download).
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
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
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
