#!/usr/bin/env bash
# Prepare everything the SRRS test guest needs; idempotent and cached.
#
#  1. apt-get installs the host packages if any is missing (QEMU, busybox-static,
#     fio, nvme-cli, ...);
#  2. downloads the Debian kernel that linux-image-amd64 currently depends on,
#     extracts it with dpkg -x and indexes its modules with depmod -b, into
#     $CACHE/kernel/<package>_<version>/ (skipped when already there);
#  3. builds the busybox initramfs (ci/guest/build_initramfs.py; skipped when up
#     to date);
#  4. writes $CACHE/guest.json (read by tests/guest/harness.py) and prints
#     KVER=, KERNEL=, INITRAMFS=, MODULES_DIR= lines on stdout.
#
# CACHE is $SRRS_GUEST_CACHE, default ~/.cache/srrs-guest.
# Options: --no-install (never call apt-get install), --force-initramfs,
# --backports: the kernel comes from <codename>-backports instead (Debian 12's
# own kernel lacks CONFIG_NVME_AUTH; the backports one has nvme-auth). The
# suite is added through a private apt sources file under $CACHE/apt-backports
# derived from the machine's own Debian entry (ci/guest/backports_source.py:
# same mirror, same keyring) with private lists, so the system's apt
# configuration is not touched. That kernel lives in $CACHE/kernel-backports,
# its manifest is $CACHE/guest-backports.json.
# Works offline once the cache is populated.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${SRRS_GUEST_CACHE:-${HOME:-/root}/.cache/srrs-guest}"
NO_INSTALL=0
FORCE_INITRAMFS=()
BACKPORTS=0
for a in "$@"; do
    case "$a" in
        --no-install) NO_INSTALL=1 ;;
        --backports) BACKPORTS=1 ;;
        --force-initramfs) FORCE_INITRAMFS=(--force) ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
    esac
done

log() { echo "guest-setup: $*" >&2; }
die() { echo "guest-setup: ERROR: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
APT_OPTS=()
apt_update() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get "${APT_OPTS[@]}" update -qq >&2 || log "apt-get update failed"
        APT_UPDATED=1
    fi
}

# ---------------------------------------------------------------- 1. packages
# package:a-file-it-provides
PKGS=(
    qemu-system-x86:/usr/bin/qemu-system-x86_64
    qemu-system-common:/usr/bin/qemu-storage-daemon
    qemu-utils:/usr/bin/qemu-img
    busybox-static:/bin/busybox
    fio:/usr/bin/fio
    nvme-cli:/usr/sbin/nvme
    kmod:/usr/sbin/depmod
    e2fsprogs:/usr/sbin/mkfs.ext4
    util-linux:/usr/sbin/blkdiscard
    python3:/usr/bin/python3
)
missing=()
for pf in "${PKGS[@]}"; do
    pkg="${pf%%:*}"; file="${pf#*:}"
    if [ ! -e "$file" ] || ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$NO_INSTALL" = 1 ] && die "missing packages: ${missing[*]} (and --no-install given)"
    [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run as root or apt-get install them"
    apt_update
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
fi

mkdir -p "$CACHE/kernel"
# Serialise concurrent setups (e.g. parallel test workers) on one cache.
exec 9>"$CACHE/.lock"
flock -w 900 9 || die "could not lock $CACHE/.lock"

# ------------------------------------------------------------------ 2. kernel
KBASE="$CACHE/kernel"
MANIFEST="$CACHE/guest.json"
EXTRA_MODULES=()
if [ "$BACKPORTS" = 1 ]; then
    ADIR="$CACHE/apt-backports"
    mkdir -p "$ADIR/lists/partial" "$ADIR/parts"
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
    python3 "$HERE/backports_source.py" "$codename" > "$ADIR/sources.list.tmp" \
        || die "no Debian apt source entry for $codename to derive $codename-backports from"
    mv "$ADIR/sources.list.tmp" "$ADIR/sources.list"
    APT_OPTS=(-o "Dir::Etc::SourceList=$ADIR/sources.list" -o "Dir::Etc::SourceParts=$ADIR/parts"
              -o "Dir::State::Lists=$ADIR/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
    KBASE="$CACHE/kernel-backports"
    APT_UPDATED=0
    MANIFEST="$CACHE/guest-backports.json"
    # nvme-auth needs the kernel's DH (RFC 7919 groups), HMAC and SHA-2.
    EXTRA_MODULES=(--modules "virtio_pci,virtio_blk,virtio_net,virtio_console,virtio_rng,virtio_scsi,nvme_tcp,nvme_fabrics,nvme_core,nvme,crc32c_generic,ext4,loop,configfs,nvmet,nvmet_tcp,nvme_auth,nvme_keyring,dh_generic,hmac,sha256_generic,sha512_generic")
    if [ ! -e "$ADIR/.updated" ] || [ -n "$(find "$ADIR/.updated" -mmin +1440)" ]; then
        log "apt-get update ($codename-backports, private lists)"
        if apt-get "${APT_OPTS[@]}" update -qq >&2; then touch "$ADIR/.updated"
        else log "backports apt-get update failed"; fi
    fi
fi
mkdir -p "$KBASE"
resolve_kernel_pkg() {
    apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 2>/dev/null \
        | awk '/^ *Depends: linux-image-[0-9]/ {print $2; exit}'
}
KPKG="$(resolve_kernel_pkg || true)"
if [ -z "$KPKG" ]; then
    apt_update
    KPKG="$(resolve_kernel_pkg || true)"
fi
KVERSION=""
if [ -n "$KPKG" ]; then
    KVERSION="$(apt-cache "${APT_OPTS[@]}" show "$KPKG" 2>/dev/null | awk '/^Version:/ {print $2; exit}')"
fi

KDIR=""
if [ -n "$KPKG" ] && [ -n "$KVERSION" ]; then
    KDIR="$KBASE/${KPKG}_${KVERSION}"
    if [ ! -e "$KDIR/.done" ]; then
        log "fetching $KPKG $KVERSION"
        tmp="$(mktemp -d "$KBASE/.tmp.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        chmod 755 "$tmp"
        if ! (cd "$tmp" && apt-get "${APT_OPTS[@]}" download -qq "$KPKG=$KVERSION" >&2 2>/dev/null); then
            apt_update
            KVERSION="$(apt-cache "${APT_OPTS[@]}" show "$KPKG" 2>/dev/null | awk '/^Version:/ {print $2; exit}')"
            KDIR="$KBASE/${KPKG}_${KVERSION}"
            (cd "$tmp" && apt-get "${APT_OPTS[@]}" download -qq "$KPKG=$KVERSION" >&2) || die "apt-get "${APT_OPTS[@]}" download $KPKG failed"
        fi
        if [ ! -e "$KDIR/.done" ]; then
            deb="$(ls "$tmp"/*.deb | head -n1)"
            dpkg -x "$deb" "$tmp/root"
            rm -f "$deb"
            rm -rf "$tmp/root/usr" "$tmp/root/etc"
            kv="$(ls "$tmp/root/lib/modules" | head -n1)"
            [ -n "$kv" ] && [ -e "$tmp/root/boot/vmlinuz-$kv" ] || die "unexpected layout in $deb"
            depmod -b "$tmp/root" "$kv"
            echo "$kv" > "$tmp/root/KVER"
            rm -rf "$KDIR"
            mv "$tmp/root" "$KDIR"
            touch "$KDIR/.done"
            log "kernel $kv extracted to $KDIR"
        fi
        rm -rf "$tmp"
        trap - EXIT
    fi
fi
if [ -z "$KDIR" ] || [ ! -e "$KDIR/.done" ]; then
    # Offline, or apt lists unusable: fall back to the newest cached kernel.
    KDIR="$(ls -1dt "$KBASE"/linux-image-*/.done 2>/dev/null | head -n1 | xargs -r dirname)"
    [ -n "$KDIR" ] || die "cannot resolve the linux-image-amd64 dependency and no kernel is cached"
    log "using cached kernel $KDIR (could not resolve a newer one)"
fi
KVER="$(cat "$KDIR/KVER")"
KERNEL="$KDIR/boot/vmlinuz-$KVER"

# The uncompressed vmlinux (an ELF with a PVH entry note) boots ~2.5 s faster
# under TCG than the bzImage, which spends that long decompressing itself.
if [ ! -s "$KDIR/boot/vmlinux-$KVER" ] && [ ! -e "$KDIR/boot/.no-vmlinux" ]; then
    if python3 "$HERE/extract_vmlinux.py" "$KERNEL" "$KDIR/boot/vmlinux-$KVER.tmp"; then
        mv "$KDIR/boot/vmlinux-$KVER.tmp" "$KDIR/boot/vmlinux-$KVER"
    else
        rm -f "$KDIR/boot/vmlinux-$KVER.tmp"
        touch "$KDIR/boot/.no-vmlinux"
        log "could not extract a PVH vmlinux; booting the bzImage"
    fi
fi
[ -s "$KDIR/boot/vmlinux-$KVER" ] && KERNEL="$KDIR/boot/vmlinux-$KVER"

# Remove superseded kernels (keep the current one).
for d in "$KBASE"/linux-image-*; do
    [ -d "$d" ] && [ "$d" != "$KDIR" ] && { log "removing old $d"; rm -rf "$d"; }
done

# --------------------------------------------------------------- 3. initramfs
INITRAMFS="$(python3 "$HERE/build_initramfs.py" --kernel-root "$KDIR" --kver "$KVER" \
    --out-dir "$CACHE/initramfs" "${EXTRA_MODULES[@]}" "${FORCE_INITRAMFS[@]}")"
[ -s "$INITRAMFS" ] || die "initramfs build failed"

# ---------------------------------------------------------------- 4. manifest
python3 - "$MANIFEST" "$KVER" "$KERNEL" "$INITRAMFS" "$KDIR/lib/modules/$KVER" <<'EOF'
import json, os, sys
path, kver, kernel, initramfs, moddir = sys.argv[1:]
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump({"kver": kver, "kernel": kernel, "initramfs": initramfs,
               "modules_dir": moddir}, f, indent=1)
os.replace(tmp, path)
EOF

echo "KVER=$KVER"
echo "KERNEL=$KERNEL"
echo "INITRAMFS=$INITRAMFS"
echo "MODULES_DIR=$KDIR/lib/modules/$KVER"
echo "MANIFEST=$MANIFEST"
