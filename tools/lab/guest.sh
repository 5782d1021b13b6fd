#!/usr/bin/env bash
# The lab's tiny guest: Debian's kernel and a busybox initramfs, no disk.
#
#   tools/lab/guest.sh build     build (or reuse) $SECMIG_LAB_DIR/guest/
#   tools/lab/guest.sh paths     print "KERNEL INITRD" of the built guest
#                                (KERNEL: the uncompressed vmlinux, PVH boot)
#   tools/lab/guest.sh clean     remove the built guest and the .debs
#
# The guest's /init writes to the serial console, every half second,
#
#   SECMIG-HEARTBEAT <counter> <marker>
#
# and keeps memory busy: a tmpfs holds 4 MiB of marker lines (so the marker
# is in guest RAM, e.g. to look for it in a capture of the migration
# stream) and 16 MiB of random data of which 1 MiB is rewritten per
# heartbeat (dirty pages for the live migration to chase). Kernel command
# line knobs: secmig.marker=STRING, secmig.dirty_kib=N (at most 1024),
# secmig.period=SECONDS, secmig.hog_mib=N (the "dirtying memory hard"
# mode: a background loop rewrites N MiB, at most 96, as fast as the vCPU
# can, so the migration has hundreds of MiB per second to chase instead of
# 2; default 0, off).
#
# The kernel and busybox come from Debian packages fetched with
# `apt-get download` (package registry only); nothing is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
LAB_DIR=${SECMIG_LAB_DIR:-$repo/.lab}
GUEST_DIR=${SECMIG_LAB_GUEST_DIR:-$LAB_DIR/guest}
DEFAULT_MARKER=SECMIG-LAB-MARKER-7d1f0c2a9e

init_script() {
    cat <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mem /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
exec </dev/ttyS0 >/dev/ttyS0 2>&1
EOF
    cat <<EOF
marker=$DEFAULT_MARKER
EOF
    cat <<'EOF'
dirty_kib=1024
period=0.5
hog_mib=0
for word in $(cat /proc/cmdline); do
    case $word in
        secmig.marker=*) marker=${word#secmig.marker=} ;;
        secmig.dirty_kib=*) dirty_kib=${word#secmig.dirty_kib=} ;;
        secmig.period=*) period=${word#secmig.period=} ;;
        secmig.hog_mib=*) hog_mib=${word#secmig.hog_mib=} ;;
    esac
done
[ "$hog_mib" -le 96 ] || hog_mib=96
mount -t tmpfs -o size=128m tmpfs /mem
yes "$marker" | head -c 4194304 > /mem/marker
# Non-zero bytes to dirty pages with (zero pages would migrate as
# nothing); /dev/urandom would wait ~1.5 s for the CRNG under TCG.
head -c 1048576 /bin/busybox > /mem/seed
for k in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do
    cat /mem/seed
done > /mem/dirty
# The marker also lives in this shell's own heap.
held=$(head -c 65536 /mem/marker)
if [ "$hog_mib" -gt 0 ]; then
    # Hard mode: rewrite hog_mib MiB in place (conv=notrunc keeps the same
    # pages), 16 MiB per dd, with no pause. Every other pass copies from
    # 64 KiB further into /mem/dirty (1 MiB periodic), so each pass really
    # changes every page (a dirty-rate estimate by sampling sees it too).
    chunks=$(( (hog_mib + 15) / 16 ))
    for k in $(seq $chunks); do cat /mem/dirty; done |
        head -c $((hog_mib * 1048576)) > /mem/hog
    (
        pass=0
        while :; do
            pass=$((pass + 1))
            k=0
            while [ $k -lt $chunks ]; do
                dd if=/mem/dirty of=/mem/hog bs=64k count=256 \
                   skip=$((pass % 2)) seek=$((k * 256)) conv=notrunc \
                   2>/dev/null
                k=$((k + 1))
            done
            echo "SECMIG-HOG-PASS $pass"
        done
    ) &
fi
echo "SECMIG-LAB-BOOTED marker=$marker dirty_kib=$dirty_kib period=$period hog_mib=$hog_mib"
[ "$dirty_kib" -le 1024 ] || dirty_kib=1024
blocks=$((dirty_kib / 64))
slots=1
[ "$blocks" -gt 0 ] && slots=$((256 / blocks))
i=0
while :; do
    i=$((i + 1))
    if [ "$blocks" -gt 0 ]; then
        dd if=/mem/seed of=/mem/dirty bs=64k count=$blocks \
           seek=$(( (i % slots) * blocks )) conv=notrunc 2>/dev/null
    fi
    echo "SECMIG-HEARTBEAT $i $marker"
    sleep "$period"
done
EOF
}

fetch() {
    local debs=$GUEST_DIR/debs kpkg
    mkdir -p "$debs"
    if ! ls "$debs"/linux-image-*.deb >/dev/null 2>&1 ||
            ! ls "$debs"/busybox-static_*.deb >/dev/null 2>&1; then
        kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
               awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        if [ -z "$kpkg" ]; then
            apt-get update -q >/dev/null
            kpkg=$(apt-cache depends linux-image-amd64 |
                   awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        fi
        [ -n "$kpkg" ] || { echo "no Debian kernel package found" >&2; exit 1; }
        (cd "$debs" && apt-get download -q "$kpkg" busybox-static 2>&1 |
                grep -v 'unsandboxed as root' || true)
    fi
    ls "$debs"/linux-image-*.deb "$debs"/busybox-static_*.deb >/dev/null
}

build() {
    local stamp want
    command -v cpio >/dev/null || { echo "cpio missing: tools/lab/install.sh" >&2; exit 1; }
    mkdir -p "$GUEST_DIR"
    # One build at a time per guest directory (concurrent test runs).
    exec 9>"$GUEST_DIR/.lock"
    flock 9
    fetch
    want=$( (cat "$0"; ls -l "$GUEST_DIR"/debs/*.deb) | sha256sum | cut -c1-64)
    stamp=$GUEST_DIR/.stamp
    if [ -f "$GUEST_DIR/vmlinux" ] && [ -f "$GUEST_DIR/initrd.gz" ] &&
            [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        echo "guest: up to date ($GUEST_DIR)"
        return 0
    fi
    work=$(mktemp -d "$GUEST_DIR/build.XXXXXX")
    trap 'rm -rf "${work:-}"' EXIT
    dpkg-deb --fsys-tarfile "$(ls "$GUEST_DIR"/debs/linux-image-*.deb | tail -1)" |
        tar -x -C "$work" --wildcards './boot/vmlinuz-*'
    cp "$(ls "$work"/boot/vmlinuz-* | tail -1)" "$GUEST_DIR/vmlinuz.new"
    # The uncompressed ELF boots through PVH: no XZ decompression under
    # TCG, ~2.5 s less per boot.
    python3 - "$GUEST_DIR/vmlinuz.new" "$GUEST_DIR/vmlinux.new" <<'PY'
import lzma, sys
data = open(sys.argv[1], 'rb').read()
start = data.find(b'\xfd7zXZ\x00')
elf = lzma.LZMADecompressor().decompress(data[start:]) if start >= 0 else b''
if elf[:4] != b'\x7fELF':
    sys.exit('cannot extract vmlinux from the kernel image')
open(sys.argv[2], 'wb').write(elf)
PY
    mkdir -p "$work/root/bin" "$work/root/dev" "$work/root/proc" \
        "$work/root/sys" "$work/root/mem" "$work/root/tmp"
    dpkg-deb --fsys-tarfile "$(ls "$GUEST_DIR"/debs/busybox-static_*.deb | tail -1)" |
        tar -x -C "$work" ./bin/busybox
    mv "$work/bin/busybox" "$work/root/bin/busybox"
    # The kernel opens /dev/console for init before anything is mounted.
    mknod -m 600 "$work/root/dev/console" c 5 1
    init_script > "$work/root/init"
    chmod 755 "$work/root/init" "$work/root/bin/busybox"
    (cd "$work/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) |
        gzip -9 > "$GUEST_DIR/initrd.gz.new"
    mv "$GUEST_DIR/vmlinuz.new" "$GUEST_DIR/vmlinuz"
    mv "$GUEST_DIR/vmlinux.new" "$GUEST_DIR/vmlinux"
    mv "$GUEST_DIR/initrd.gz.new" "$GUEST_DIR/initrd.gz"
    echo "$want" > "$stamp"
    echo "guest: built $GUEST_DIR/vmlinux $GUEST_DIR/initrd.gz"
}

case ${1:-} in
    build) build ;;
    paths)
        [ -f "$GUEST_DIR/vmlinux" ] && [ -f "$GUEST_DIR/initrd.gz" ] ||
            { echo "guest not built: tools/lab/guest.sh build" >&2; exit 1; }
        echo "$GUEST_DIR/vmlinux $GUEST_DIR/initrd.gz" ;;
    clean) rm -rf "$GUEST_DIR" ;;
    marker) echo "$DEFAULT_MARKER" ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
