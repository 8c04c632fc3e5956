#!/bin/bash
# CI for gupdev: builds gupdev.ko for both oracle kernels against their headers, which the
# oracle fetches into its kernel cache with `apt-get download` (no headers package is
# installed); warnings are errors. With --boot it also boots each kernel under QEMU and runs
# the guest test (test/boot.sh; 30-36 s per kernel under TCG, plus the image download).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
boot=0
[ "${1:-}" = "--boot" ] && boot=1
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian 12 builds both kernels with gcc-12, which kbuild calls by that name.
pkgs=(make gcc-12 xz-utils)
[ $boot = 1 ] && pkgs+=(cpio qemu-system-x86)
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
start=$(date +%s)
(cd "$here/../.." && NUMASIM_ORACLE=1 cargo test --locked -p oracle --test it gupdev_build:: -- --nocapture)
echo "gupdev: fetched the headers and built for both kernels in $(( $(date +%s) - start )) s"
if [ $boot = 1 ]; then
	mapfile -t releases < <("$here/kernels.sh")
	for r in "${releases[@]}"; do
		"$here/test/boot.sh" "$r" >/dev/null
		echo "gupdev: guest test passed on $r"
	done
fi
