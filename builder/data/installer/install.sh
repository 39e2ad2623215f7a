#!/bin/sh
# rampart offline installer (installed by rampart's installer stage; runs
# as rampart-install.service when the installer medium boots).
#
# Writes the golden image kept on this medium to the target disk, reads it
# back to check it, gives the disk identifiers of its own (disk GUID,
# partition and file-system UUIDs), grows the last partition (/var, or the
# root) and its file system to the disk, and powers off. Every check (target found, empty or allowed to be
# replaced, large enough, image intact) comes before the first write; if a
# write fails, what was written is wiped, so no half-installed disk is left.
set -u
. /usr/lib/rampart-installer/installer.conf

writing=0
target=""
say() { echo "rampart-install: $*"; }
fail() {
    if [ "$writing" = 1 ]; then
        wipefs --all --quiet "$target" >/dev/null 2>&1
        dd if=/dev/zero of="$target" bs=1M count=1 conv=notrunc,fsync status=none 2>/dev/null
        say "FAILED: $*; the partly written image was wiped from $target"
    else
        say "FAILED: $*; nothing was written to any disk"
    fi
    exit 1
}

udevadm settle --timeout=60 || true
own_part=$(findmnt -nvo SOURCE /) || fail "cannot tell which disk the installer runs from"
own_disk=/dev/$(lsblk -ndo PKNAME "$own_part")
[ "$own_disk" != /dev/ ] || fail "cannot tell which disk holds $own_part"
image_mib=$(( (IMAGE_BYTES + 1048575) / 1048576 ))
say "installing $NAME ($image_mib MiB) from $own_disk"

# A disk is empty when no signature (partition table, file system, RAID,
# LVM, ...) is found on it and its first MiB is all zeros.
is_empty() {
    [ -z "$(wipefs --noheadings --output TYPE "$1" 2>/dev/null)" ] && cmp -s -n 1048576 "$1" /dev/zero
}

if [ -n "$TARGET" ]; then
    waited=0
    while [ ! -b "$TARGET" ] && [ "$waited" -lt 30 ]; do sleep 1; waited=$((waited + 1)); done
    [ -b "$TARGET" ] || fail "the profile's target disk $TARGET is not attached (installer.target)"
    target=$(readlink -f "$TARGET")
    [ "$(lsblk -ndo TYPE "$target")" = disk ] || fail "the profile's target $TARGET ($target) is not a whole disk (installer.target)"
    [ "$target" != "$own_disk" ] || fail "the profile's target $TARGET is the installer's own disk (installer.target)"
    if ! is_empty "$target"; then
        found=$(wipefs --noheadings --output TYPE "$target" 2>/dev/null | sort -u | tr '\n' ' ')
        [ "$OVERWRITE" = yes ] || fail "the target disk $TARGET ($target) is not empty (found: ${found:-data in its first MiB}); set installer.overwrite = true in the profile to replace what it holds"
        say "replacing what $target holds (${found:-data}), as installer.overwrite allows"
    fi
else
    empty=""
    others=""
    for disk in $(lsblk -dnpo NAME,TYPE,RO | awk '$2 == "disk" && $3 == "0" { print $1 }'); do
        [ "$disk" = "$own_disk" ] && continue
        if is_empty "$disk"; then empty="$empty $disk"; else others="$others $disk"; fi
    done
    set -- $empty
    [ "$#" -ge 1 ] || fail "no empty disk to install on (disks holding data:${others:- none}); attach an empty disk or name one in installer.target"
    [ "$#" -eq 1 ] || fail "more than one empty disk ($*); name the target in installer.target"
    target=$1
fi

size=$(blockdev --getsize64 "$target") || fail "cannot read the size of $target"
[ "$size" -ge "$IMAGE_BYTES" ] || fail "the target disk $target is too small: $((size / 1048576)) MiB, and the image needs $image_mib MiB"

say "checking the image on the installer medium (sha256)"
sum=$(sha256sum "$IMAGE" | cut -d' ' -f1)
[ "$sum" = "$IMAGE_SHA256" ] || fail "the image on the installer medium is damaged (sha256 $sum, expected $IMAGE_SHA256); write the installer again"

# The first MiB (the protective MBR and the primary GPT) goes last: until
# the rest is written and checked, the target holds no valid partition table.
say "writing $NAME to $target ($((size / 1048576)) MiB disk)"
writing=1
dd if="$IMAGE" of="$target" bs=1M skip=1 seek=1 conv=notrunc,fsync status=none || fail "writing to $target failed"
blockdev --flushbufs "$target"
cmp -s -i 1048576 -n $((IMAGE_BYTES - 1048576)) "$IMAGE" "$target" || fail "what was written to $target does not read back as the image"
dd if="$IMAGE" of="$target" bs=1M count=1 conv=notrunc,fsync status=none || fail "writing the partition table to $target failed"
blockdev --flushbufs "$target"
cmp -s -n 1048576 "$IMAGE" "$target" || fail "the partition table written to $target does not read back"
say "written and read back: $image_mib MiB"

# udev reacts to the writes by probing the disk, and while it holds the disk
# open the kernel refuses to re-read its table: wait and retry, then let
# partx add the partitions one by one.
reread() {
    tries=0
    while [ "$tries" -lt 15 ]; do
        udevadm settle --timeout=30 || true
        blockdev --rereadpt "$target" 2>/dev/null && return 0
        tries=$((tries + 1))
        sleep 1
    done
    partx --update "$target"
}
reread || fail "the kernel did not take $target's new partition table"
udevadm settle --timeout=60 || true
# The image's identifiers are every copy's: this disk gets its own, so that
# it and any other disk from the same image can sit side by side.
/usr/lib/rampart-installer/make-disk-unique "$target" || fail "could not give $target identifiers of its own"
reread || fail "the kernel did not take $target's new partition table"
udevadm settle --timeout=60 || true
disk_guid=$(lsblk -rndo PTUUID "$target")
for disk in $(lsblk -dnpo NAME,TYPE | awk '$2 == "disk" { print $1 }'); do
    [ "$disk" = "$target" ] && continue
    [ "$(lsblk -rndo PTUUID "$disk")" = "$disk_guid" ] && fail "$disk carries the disk GUID just given to $target ($disk_guid)"
done
say "growing $GROWS to the disk (systemd-repart)"
systemd-repart --dry-run=no --no-pager --definitions=/usr/lib/rampart-installer/repart.d "$target" || fail "systemd-repart could not grow the $GROWS partition on $target"
udevadm settle --timeout=60 || true
# The partition that grows (the x86-64 root, or /var), found by its type as
# systemd-repart found it.
grows_of() { lsblk -rnpo NAME,PARTTYPE "$target" | awk -v type="$GROWS_TYPE" 'tolower($2) == tolower(type) { print $1 }'; }
waited=0
part=$(grows_of)
while [ -z "$part" ] && [ "$waited" -lt 30 ]; do sleep 1; udevadm settle --timeout=5 || true; waited=$((waited + 1)); part=$(grows_of); done
[ -n "$part" ] && [ -b "$part" ] || fail "the $GROWS partition did not appear on $target"
e2fsck -f -p "$part" >/dev/null
[ "$?" -le 1 ] || fail "e2fsck found errors on the installed $GROWS file system"
resize2fs "$part" >/dev/null 2>&1 || fail "resize2fs could not grow the $GROWS file system on $target"
sync
part_mib=$(( $(blockdev --getsize64 "$part") / 1048576 ))
writing=0
say "done: $NAME installed on $target, $GROWS partition $part_mib MiB; powering off"
