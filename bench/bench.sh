#!/bin/bash
# Measures rampart against its targets, in one run, and prints the figures:
#   floor      plain mmdebstrap of the same locked package set (same local repo, same dpkg options)
#   cold       rampart build --offline with an empty package-stage cache
#   warm       rampart build --offline after a profile edit that keeps the lock
#   sizes      qcow2, raw (allocated), rootfs.tar.gz
#   boot       QEMU start to SSH login with the provisioned key, median of three boots (TCG here; KVM where it works)
# Targets: cold <= 1.15 x floor; warm < 15 s; boot < 25 s (TCG) / 3 s (KVM); qcow2 < 150 MB.
# Needs root; uses the shared cache for .debs. Usage: bench/bench.sh [PROFILE-NAME]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
name=${1:-baseline}
"$repo/scripts/install-host-tools"
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --bin rampart
rampart="$repo/target/release/rampart"

work=$(mktemp -d /var/tmp/rampart-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -a "$repo/profiles" "$repo/overlays" "$repo/vm-tests" "$work/"
rm -f "$work"/profiles/*.lock
cd "$work"
now() { date +%s.%N; }
seconds() { echo "$2 - $1" | bc; }

"$rampart" lock "profiles/$name.toml" >/dev/null 2>&1
"$rampart" fetch "profiles/$name.toml" >/dev/null 2>&1
cache="$work/cache"
mkdir -p "$cache/debs"
ln /var/cache/rampart/debs/*.deb "$cache/debs/"

# The floor: mmdebstrap alone, same packages, same repository, same options.
repo_dir="$work/repo"
mkdir -p "$repo_dir/pool" "$repo_dir/dists/bookworm/main/binary-amd64"
awk -F' = ' '/^sha256 = /{gsub(/"/,"",$2); print $2}' "profiles/$name.lock" | while read -r sha; do
    ln "$cache/debs/$sha.deb" "$repo_dir/pool/$sha.deb"
done
(cd "$repo_dir" && apt-ftparchive packages pool > dists/bookworm/main/binary-amd64/Packages 2>/dev/null &&
  apt-ftparchive -o APT::FTPArchive::Release::Suite=bookworm -o APT::FTPArchive::Release::Codename=bookworm \
    -o APT::FTPArchive::Release::Components=main -o APT::FTPArchive::Release::Architectures=amd64 \
    release dists/bookworm > dists/bookworm/Release)
includes=$(awk -F' = ' '/^name = /{gsub(/"/,"",$2); print $2}' "profiles/$name.lock" | paste -sd, -)
epoch=$(awk -F' = ' '/^source-date-epoch/{print $2}' "profiles/$name.lock")
# The same initramfs configuration rampart lays in before the kernel installs.
mkdir -p "$work/initramfs-tools/conf.d" "$work/initramfs-tools/hooks"
printf 'MODULES=list\n' > "$work/initramfs-tools/conf.d/rampart.conf"
cat > "$work/initramfs-tools/hooks/rampart-modules" <<'EOT'
#!/bin/sh
case "$1" in prereqs) exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
for module in virtio_pci virtio_blk virtio_scsi sd_mod ahci nvme xen_blkfront hv_storvsc vmw_pvscsi; do manual_add_modules "$module"; done
EOT
chmod 755 "$work/initramfs-tools/hooks/rampart-modules"
t0=$(now)
SOURCE_DATE_EPOCH=$epoch TMPDIR="$work" unshare --net --mount --propagation private -- mmdebstrap \
    --variant=essential --mode=root --format=tar --architectures=amd64 \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --include="$includes" \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools"' \
    --essential-hook="sync-in $work/initramfs-tools /etc/initramfs-tools" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='path-exclude=/usr/share/linda/*' \
    bookworm "$work/floor.tar" "deb [trusted=yes] copy://$repo_dir bookworm main" >/dev/null 2>&1
t1=$(now)
floor=$(seconds "$t0" "$t1")

t0=$(now)
"$rampart" build "profiles/$name.toml" --offline --cache "$cache" --out "out/$name" >/dev/null 2>&1
t1=$(now)
cold=$(seconds "$t0" "$t1")

sed -i 's/^organisation = .*/organisation = "bench-edit"/' "profiles/$name.toml"
t0=$(now)
"$rampart" build "profiles/$name.toml" --offline --cache "$cache" --out "out/$name" >/dev/null 2>&1
t1=$(now)
warm=$(seconds "$t0" "$t1")

qcow2=$(stat -c %s "out/$name/$name.qcow2")
raw_alloc=$(( $(stat -c %b "out/$name/$name.raw") * 512 ))
targz=$(stat -c %s "out/$name/$name.rootfs.tar.gz")

# Three boots, one after the other (each a first boot of its own scratch
# disk): the spread between runs on a shared host is larger than most steps.
cat > vm-tests/bench-boot.toml <<EOT
profile = "$name"
[[machine]]
name = "boot1"
[[machine]]
name = "boot2"
[[machine]]
name = "boot3"
[[check]]
name = "up"
machine = "all"
succeed = "true"
EOT
# A boot that fails is reported, not fatal: the other figures still print.
boot_log=$("$rampart" test "profiles/$name.toml" --scenario bench-boot --cache "$cache" --out "out/$name" 2>&1 | grep -E 'SSH ready|acceleration' || true)
boots=$(echo "$boot_log" | sed -n 's/.*SSH ready \([0-9.]*\) s.*/\1/p' | sort -n | tr '\n' ' ')
boot=$(echo "$boots" | awk 'NF == 3 {print $2}')
[ -n "$boot" ] || boot="? (only $(echo "$boots" | wc -w) of 3 boots reached SSH)"
accel=$(echo "$boot_log" | grep -q 'using KVM' && echo kvm || echo tcg)

printf '\nrampart benchmark, profile %s, %s, %s cores\n' "$name" "$(date -u +%Y-%m-%d)" "$(nproc)"
printf '  %-44s %8.1f s\n' "floor: plain mmdebstrap, same package set" "$floor"
printf '  %-44s %8.1f s   (%.2fx floor; target <= 1.15x)\n' "cold offline build" "$cold" "$(echo "$cold / $floor" | bc -l)"
printf '  %-44s %8.1f s   (target < 15 s)\n' "warm rebuild after a profile edit" "$warm"
printf '  %-44s %8.1f MB  (target < 150 MB)\n' "qcow2" "$(echo "$qcow2 / 1000000" | bc -l)"
printf '  %-44s %8.1f MB\n' "raw, allocated" "$(echo "$raw_alloc / 1000000" | bc -l)"
printf '  %-44s %8.1f MB\n' "rootfs.tar.gz" "$(echo "$targz / 1000000" | bc -l)"
printf '  %-44s %8s s   (%s, median of: %s; target < 25 s TCG, < 3 s KVM)\n' "boot to SSH login" "${boot:-?}" "$accel" "$boots"
