#!/usr/bin/env bash
# Regenerate the figures in docs/EXPERIMENTS.md. Usage: bench/run-all.sh [--quick]
# Results go to docs/results/ (CSV) and are printed as tables.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); fi
out=docs/results
mkdir -p "$out"

echo "== building kvfs-bench (release)"
cargo build --release --locked --bin kvfs-bench
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

echo "== fs: small files through FUSE (kvfs, bindfs over tmpfs, s3fs)"
for tool in bindfs s3fs fusermount3; do
    command -v "$tool" >/dev/null 2>&1 || missing="${missing:-} $tool"
done
if [ -n "${missing:-}" ]; then
    echo "installing:${missing} (apt-get install -y bindfs s3fs fuse3)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bindfs s3fs fuse3
fi
cargo build --release --locked --bin kvfs
"$bench" fs "${quick[@]}" --out "$out"

echo "== gc: space amplification under overwrites; cold directory scan before and after compaction"
"$bench" gc "${quick[@]}" --out "$out"
