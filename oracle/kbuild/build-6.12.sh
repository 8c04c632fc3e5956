#!/usr/bin/env bash
# Builds a small 6.12 bzImage from Debian's linux-source-6.12 for `numasim kernel --kernel PATH`,
# optionally with "mm/gup: don't implicitly set FOLL_HONOR_NUMA_FAULT" (patch 4 of the 2023
# series) reverted, so its effect can be measured on one kernel with and without it.
#
#   oracle/kbuild/build-6.12.sh OUT_DIR            # Debian's 6.12 source as shipped (v6.6+ GUP rule)
#   oracle/kbuild/build-6.12.sh OUT_DIR --revert-patch4   # the v6.5 rule (numasim gup_policy implicit-force)
#
# Needs: apt-get install -y linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev
# Writes OUT_DIR/bzImage and OUT_DIR/config (numasim kernel reads the config beside the image).
# About 4 minutes on 2 idle cores (tinyconfig plus the fragment below; measured 22 min 44 s on
# 2 cores under a load of 10); too slow for CI.
set -euo pipefail
out=${1:?usage: build-6.12.sh OUT_DIR [--revert-patch4]}
revert=${2:-}
tarball=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -n 1)
if [ -z "$tarball" ]; then
	echo "error: no /usr/src/linux-source-6.12.tar.*: apt-get install -y linux-source-6.12" >&2
	exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xf "$tarball"
src=$(echo "$work"/linux-source-6.12)
if [ "$revert" = "--revert-patch4" ]; then
	# Patch 4 removed the last line of is_valid_gup_args(): put it back.
	python3 - "$src/mm/gup.c" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
start = text.index("static bool is_valid_gup_args(")
end = text.index("\treturn true;\n}", start)
if "FOLL_HONOR_NUMA_FAULT" in text[start:end]:
    sys.exit("is_valid_gup_args() already sets FOLL_HONOR_NUMA_FAULT")
text = text[:end] + "\t/* patch 4 reverted: every external GUP caller honors NUMA hinting faults */\n\t*gup_flags_p |= FOLL_HONOR_NUMA_FAULT;\n" + text[end:]
open(path, "w").write(text)
PY
	grep -q "patch 4 reverted" "$src/mm/gup.c"
fi
cat > "$work/numasim.config" <<'CFG'
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NR_CPUS=64
CONFIG_PRINTK=y
CONFIG_TTY=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_BINFMT_ELF=y
CONFIG_PROC_FS=y
CONFIG_SYSFS=y
CONFIG_DEVTMPFS=y
CONFIG_TMPFS=y
CONFIG_DEBUG_FS=y
CONFIG_SCHED_DEBUG=y
CONFIG_FUTEX=y
CONFIG_CROSS_MEMORY_ATTACH=y
CONFIG_ACPI=y
CONFIG_PCI=y
CONFIG_NUMA=y
CONFIG_X86_64_ACPI_NUMA=y
CONFIG_ACPI_NUMA=y
CONFIG_NUMA_EMU=y
CONFIG_NUMA_BALANCING=y
CONFIG_NUMA_BALANCING_DEFAULT_ENABLED=y
CONFIG_MIGRATION=y
CONFIG_TRANSPARENT_HUGEPAGE=y
CONFIG_KSM=y
CONFIG_BLOCK=y
CONFIG_BLK_DEV=y
CONFIG_BLK_DEV_RAM=y
CONFIG_VM_EVENT_COUNTERS=y
CONFIG_ADVISE_SYSCALLS=y
CONFIG_AIO=y
CONFIG_IO_URING=y
CONFIG_PROC_PAGE_MONITOR=y
CONFIG_HZ_250=y
CONFIG_TRACING=y
CONFIG_FTRACE=y
CFG
make -C "$src" -s tinyconfig
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$work/numasim.config" >/dev/null
make -C "$src" -s olddefconfig
make -C "$src" -s -j"$(nproc)" bzImage
cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
cp "$src/.config" "$out/config"
echo "$out/bzImage"
