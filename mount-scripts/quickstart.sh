#!/usr/bin/env bash
# Quick start: install what kvfs needs, build it, and use a store in a local
# directory (no S3 needed): keys through the CLI, then files through a mount.
# Usage: bash mount-scripts/quickstart.sh [STORE_DIR] [MOUNT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-./demo-store}
mnt=${2:-./demo-mnt}

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
echo "== building kvfs (release)"
cargo build --release --locked --bin kvfs
kvfs=./target/release/kvfs

echo "== keys through the CLI, in $store"
"$kvfs" put "$store" greeting "hello, kvfs"
"$kvfs" put "$store" users/42/profile.json '{"name": "Ada"}'
"$kvfs" get "$store" greeting; echo
"$kvfs" scan "$store" --prefix users/

# `kvfs unmount` returns once the daemon has uploaded everything, given the writer
# lease back and exited (`fusermount3 -u` would return before that).
unmount() {
    "$kvfs" unmount "$mnt"
}

echo "== the same store as a file system at $mnt"
mkdir -p "$mnt"
"$kvfs" mount "$store" "$mnt"          # returns once mounted; runs in the background
trap 'fusermount3 -u "$mnt" 2>/dev/null || true' EXIT
mkdir -p "$mnt/a"
echo hello > "$mnt/a/b"
cat "$mnt/a/b"
ls -l "$mnt/a"
cat "$mnt/users/42/profile.json"; echo
unmount                                  # uploads everything, then unmounts

echo "== remounted: the file is still there"
"$kvfs" mount "$store" "$mnt"
cat "$mnt/a/b"
unmount
trap - EXIT
"$kvfs" get "$store" a/b
echo "== store statistics and a full check"
"$kvfs" stats "$store"
"$kvfs" fsck "$store"
