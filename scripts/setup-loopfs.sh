#!/usr/bin/env bash
# A small ext4 file system on a loop device, for the fault battery's full-disk and read-only cases
# (tests/faults/cases_disk.py). Root only: without root or loop devices it prints one line
# `skip: <reason>` and exits 0, and the battery skips those cases with that reason.
#
#   scripts/setup-loopfs.sh check                    print `ok`, or `skip: <reason>`
#   scripts/setup-loopfs.sh MOUNTPOINT [SIZE_MIB]    make MOUNTPOINT.img (default 16 MiB, no reserved blocks)
#                                                    and mount it at MOUNTPOINT; prints `mounted MOUNTPOINT`
#   scripts/setup-loopfs.sh ro MOUNTPOINT            remount it read-only (root cannot write either)
#   scripts/setup-loopfs.sh rw MOUNTPOINT            remount it read-write
#   scripts/setup-loopfs.sh stop MOUNTPOINT          unmount it, free its loop device, delete the image
set -euo pipefail

skip() { echo "skip: $*"; exit 0; }

usable() {
    [ "$(id -u)" = 0 ] || skip "not root (a loop mount needs root)"
    command -v mkfs.ext4 >/dev/null 2>&1 || skip "mkfs.ext4 is not installed (Debian: e2fsprogs)"
    command -v losetup >/dev/null 2>&1 || skip "losetup is not installed (Debian: mount)"
    [ -e /dev/loop-control ] || ls /dev/loop[0-9]* >/dev/null 2>&1 || skip "no loop devices (/dev/loop-control)"
}

case "${1:-}" in
    "" | -h | --help)
        sed -n '2,13p' "$0"; exit 0 ;;
    check)
        usable
        probe=$(mktemp -d /tmp/converge-loopfs-check.XXXXXX)
        if "$0" "$probe/mnt" 4 >/dev/null 2>"$probe/err"; then
            "$0" stop "$probe/mnt" >/dev/null 2>&1 || true
            rm -rf "$probe"
            echo ok
        else
            reason=$(tail -n 1 "$probe/err")
            "$0" stop "$probe/mnt" >/dev/null 2>&1 || true
            rm -rf "$probe"
            skip "cannot loop-mount here: ${reason:-mount failed}"
        fi ;;
    ro | rw)
        mount -o "remount,$1" "$2" ;;
    stop)
        mnt=$2
        if mountpoint -q "$mnt"; then umount "$mnt" || umount -l "$mnt"; fi
        rm -f "$mnt.img"
        rmdir "$mnt" 2>/dev/null || true ;;
    *)
        usable
        mnt=$1
        size=${2:-16}
        mkdir -p "$mnt"
        truncate -s "${size}M" "$mnt.img"
        mkfs.ext4 -q -F -m 0 -E nodiscard "$mnt.img"
        mount -o loop "$mnt.img" "$mnt"   # a loop device of its own, freed again at umount
        chmod 0777 "$mnt"
        echo "mounted $mnt" ;;
esac
