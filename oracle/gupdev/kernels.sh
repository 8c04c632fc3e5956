#!/bin/bash
# Prints the releases of the two oracle kernels, one a line: the newest Debian 12
# linux-image-6.1.0-NN-amd64 and linux-image-6.12.NN+deb12-amd64 that also have a
# linux-headers package (the module is built against the kernel the oracle boots).
# Needs a fresh `apt-get update`. Exit 2 when a kernel has no image+headers pair.
set -euo pipefail
newest() { # PATTERN(ERE of the release)
	comm -12 \
		<(apt-cache pkgnames linux-image- | sed -nE "s/^linux-image-($1)\$/\\1/p" | sort) \
		<(apt-cache pkgnames linux-headers- | sed -nE "s/^linux-headers-($1)\$/\\1/p" | sort) |
		sort -V | tail -n 1
}
for pattern in '6\.1\.0-[0-9]+-amd64' '6\.12\.[0-9]+\+deb12-amd64'; do
	release=$(newest "$pattern")
	if [ -z "$release" ]; then
		echo "gupdev: no linux-image + linux-headers pair matches $pattern (run apt-get update)" >&2
		exit 2
	fi
	echo "$release"
done
