#!/usr/bin/env bash
# Run the pjdfstest POSIX conformance suite against a kvfs mount of a fresh local
# store, as root, from a fresh directory of the mount with --allow-other.
#
#   bash bench/run-posix-suite.sh PJDFSTEST_CHECKOUT [STORE_DIR]
#
# PJDFSTEST_CHECKOUT is a checkout of https://github.com/pjd/pjdfstest (not shipped
# with kvfs). The script builds it if needed (autoconf, automake, gcc, make), builds
# kvfs in release mode, mounts, runs `prove -r`, prints the summary and unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:?usage: bash bench/run-posix-suite.sh PJDFSTEST_CHECKOUT [STORE_DIR]}
suite=$(cd "$suite" && pwd)
work=$(mktemp -d)
store=${2:-$work/store}
point=$work/mnt
if [ "$(id -u)" != 0 ]; then
    echo "run as root: the suite switches users and creates device nodes" >&2
    exit 2
fi
need=()
command -v autoreconf >/dev/null 2>&1 || need+=(autoconf automake)
command -v prove >/dev/null 2>&1 || need+=(perl)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev make)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ ! -x "$suite/pjdfstest" ]; then
    echo "== building pjdfstest in $suite"
    (cd "$suite" && autoreconf -ifs && ./configure && make) >"$work/build.log" 2>&1 || {
        cat "$work/build.log" >&2
        exit 1
    }
fi
echo "== building kvfs (release)"
cargo build --release --locked -p kvfs
mkdir -p "$point"
./target/release/kvfs mount "$store" "$point" --allow-other
trap 'cd /; fusermount3 -u "$point" 2>/dev/null || true' EXIT
mkdir "$point/suite"
cd "$point/suite"
echo "== pjdfstest in $point/suite (store $store)"
status=0
prove -r "$suite/tests" >"$work/prove.log" 2>&1 || status=$?
grep -v ' ok$' "$work/prove.log" || true
echo "full output: $work/prove.log"
exit "$status"
