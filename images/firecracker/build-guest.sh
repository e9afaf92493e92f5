#!/usr/bin/env bash
# Build corral's Firecracker guest: a read-only root filesystem image and a guest kernel.
#
#   sudo images/firecracker/build-guest.sh [--out DIR] [--rootfs-only | --kernel-only]
#
# Outputs (in DIR, default ./build/firecracker): rootfs.ext4 and vmlinux, both 0644, for
# FirecrackerConfig(rootfs=..., kernel=...). Run it as root on a Debian 12 (bookworm) host.
# See images/firecracker/README.md for what each step does and why.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

OUT="$PWD/build/firecracker"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BUILD_ROOTFS=1
BUILD_KERNEL=1
JOBS=$(nproc)

# Firecracker's published guest kernel configuration, fetched at build time (not committed),
# pinned by commit and content hash. Keep the commit in step with the Firecracker release the
# backend is built against (specs/firecracker-v1.16.1.yaml).
FC_REPO_RAW=https://raw.githubusercontent.com/firecracker-microvm/firecracker
FC_CONFIG_COMMIT=9157a0cf7188706cef3bbe01316171964f569a76
FC_CONFIG_PATH=resources/guest_configs/microvm-kernel-ci-x86_64-6.1.config
FC_CONFIG_SHA256="${FC_CONFIG_SHA256:-@FC_CONFIG_SHA256@}"

# Options the backend relies on, checked after `make olddefconfig` (all built in: no initrd).
KERNEL_REQUIRED=(
    VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VSOCKETS VIRTIO_VSOCKETS
    VIRTIO_VSOCKETS_COMMON EXT4_FS DEVTMPFS DEVTMPFS_MOUNT TMPFS SERIAL_8250_CONSOLE
    SERIO_I8042 KEYBOARD_ATKBD HW_RANDOM_VIRTIO UNIX INET
)

GUEST_UID=1000
ROOTFS_PACKAGES=python3

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() {
    echo "build-guest: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --rootfs-only) BUILD_KERNEL=0; shift ;;
        --kernel-only) BUILD_ROOTFS=0; shift ;;
        --jobs) JOBS=$2; shift 2 ;;
        -h | --help) usage 0 ;;
        *) echo "unknown option: $1" >&2; usage 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/corral-guest.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "missing $tool (apt-get install ${PKG_HINT:-$tool})"
    done
}

build_rootfs() {
    PKG_HINT="debootstrap e2fsprogs" need debootstrap mkfs.ext4 chroot
    local root="$WORK/rootfs"
    echo "build-guest: debootstrap --variant=minbase $SUITE (+ $ROOTFS_PACKAGES)"
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$SUITE" "$root" "$MIRROR"
    local tool
    for tool in /usr/bin/python3 /usr/bin/prlimit /usr/bin/setpriv; do
        [ -x "$root$tool" ] || die "the guest root lacks $tool (the init needs it)"
    done

    # corral's guest package only (standard library, no third-party imports at module level).
    install -d "$root/opt/corral/src/corral"
    install -m 0644 "$REPO/src/corral/__init__.py" "$root/opt/corral/src/corral/__init__.py"
    cp -r "$REPO/src/corral/guest" "$root/opt/corral/src/corral/guest"
    find "$root/opt/corral" -name '__pycache__' -prune -exec rm -rf {} +
    chroot "$root" /usr/bin/python3 -m compileall -q /opt/corral/src

    # The init, the agent user, mount points.
    install -m 0755 "$HERE/init.py" "$root/sbin/corral-init"
    chroot "$root" /usr/sbin/groupadd --gid "$GUEST_UID" agent
    chroot "$root" /usr/sbin/useradd --uid "$GUEST_UID" --gid "$GUEST_UID" \
        --home-dir /work --no-create-home --shell /usr/sbin/nologin agent
    install -d -m 0755 "$root/work" "$root/run" "$root/proc" "$root/sys" "$root/dev"
    install -d -m 1777 "$root/tmp"

    # Smaller image: package caches, manuals. Copyright files under /usr/share/doc stay.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/man "$root"/usr/share/info
    find "$root/usr/share/doc" -type f ! -name copyright -delete

    # Read-only root: no journal. mkfs.ext4 -d copies the tree with its owners and modes.
    local used_kib size_mib
    used_kib=$(du -sk "$root" | cut -f1)
    size_mib=$(( used_kib * 13 / 10 / 1024 + 64 ))
    rm -f "$OUT/rootfs.ext4"
    truncate -s "${size_mib}M" "$OUT/rootfs.ext4"
    mkfs.ext4 -q -F -L corral-root -O ^has_journal -d "$root" "$OUT/rootfs.ext4"
    chmod 0644 "$OUT/rootfs.ext4"
    echo "build-guest: wrote $OUT/rootfs.ext4 (${size_mib} MiB apparent)"
}

build_kernel() {
    PKG_HINT="build-essential bc bison flex libelf-dev libssl-dev curl xz-utils" \
        need make gcc bc bison flex curl sha256sum tar xz
    case "$FC_CONFIG_SHA256" in
        @*@ | "") die "FC_CONFIG_SHA256 is not pinned (see images/firecracker/README.md)" ;;
    esac
    local config="$WORK/microvm-kernel.config"
    echo "build-guest: fetching $FC_CONFIG_PATH at $FC_CONFIG_COMMIT"
    curl -fsSL --proto '=https' -o "$config" "$FC_REPO_RAW/$FC_CONFIG_COMMIT/$FC_CONFIG_PATH"
    echo "$FC_CONFIG_SHA256  $config" | sha256sum -c - >/dev/null \
        || die "sha256 of $FC_CONFIG_PATH is not $FC_CONFIG_SHA256"

    # Debian's kernel source (6.1, the series Firecracker's config is for).
    local tarball
    tarball=$(find /usr/src -maxdepth 1 -name 'linux-source-6.1.tar.xz' | head -n 1)
    if [ -z "$tarball" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends linux-source-6.1
        tarball=/usr/src/linux-source-6.1.tar.xz
    fi
    [ -f "$tarball" ] || die "no $tarball after installing linux-source-6.1"
    tar -C "$WORK" -xf "$tarball"
    local src="$WORK/linux-source-6.1"

    cp "$config" "$src/.config"
    local option args=()
    for option in "${KERNEL_REQUIRED[@]}"; do
        args+=(--enable "$option")
    done
    (cd "$src" && ./scripts/config "${args[@]}" && make olddefconfig >/dev/null)
    for option in "${KERNEL_REQUIRED[@]}"; do
        grep -q "^CONFIG_${option}=y$" "$src/.config" || die "CONFIG_${option} is not built in"
    done

    echo "build-guest: make vmlinux (-j$JOBS); this takes a while"
    make -C "$src" -j"$JOBS" vmlinux >"$WORK/kernel-build.log" 2>&1 \
        || { tail -n 40 "$WORK/kernel-build.log" >&2; die "kernel build failed"; }
    install -m 0644 "$src/vmlinux" "$OUT/vmlinux"
    echo "build-guest: wrote $OUT/vmlinux"
}

if [ "$BUILD_ROOTFS" -eq 1 ]; then build_rootfs; fi
if [ "$BUILD_KERNEL" -eq 1 ]; then build_kernel; fi
