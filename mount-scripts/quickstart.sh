#!/usr/bin/env bash
# Quick start: install what kvfs needs, build it, and use a store in a local
# directory (no S3 needed). Usage: bash mount-scripts/quickstart.sh [STORE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-./demo-store}

if ! command -v cc >/dev/null 2>&1; then
    echo "== installing a C compiler (needed to build the TLS library)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev
fi
echo "== building kvfs (release)"
cargo build --release --locked --bin kvfs
kvfs=./target/release/kvfs

echo "== writing three keys to $store"
"$kvfs" put "$store" greeting "hello, kvfs"
"$kvfs" put "$store" users/42/profile.json '{"name": "Ada"}'
echo "a value from standard input" | "$kvfs" put "$store" users/43/note
echo "== reading them back"
"$kvfs" get "$store" greeting; echo
"$kvfs" scan "$store" --prefix users/
echo "== store statistics"
"$kvfs" stats "$store"
echo "== verifying every object"
"$kvfs" fsck "$store"
