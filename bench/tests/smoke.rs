//! The benchmark binary runs end to end (tiny sizes) and writes its CSV.

use std::process::Command;

#[test]
fn engine_benchmark_runs_and_writes_csv() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_kvfs-bench"))
        .args([
            "engine",
            "--puts",
            "3000",
            "--keys",
            "2000",
            "--tail-puts",
            "300",
            "--syncs",
            "5",
            "--put-latency-ms",
            "2",
            "--get-latency-ms",
            "1",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for metric in [
        "nondurable_puts_per_s",
        "s3_puts_per_pair",
        "sync_p50_over_put_p50",
        "open_checkpointed_s",
        "index_heap_bytes_per_key_beyond_key",
    ] {
        assert!(stdout.contains(metric), "{metric} missing from:\n{stdout}");
    }
    let csv = std::fs::read_to_string(out.path().join("engine.csv")).unwrap();
    assert!(csv.starts_with("metric,backend,value,unit,target,met\n"));
    assert!(csv.lines().count() > 10);
}

/// The mount runs start the `kvfs` binary next to `kvfs-bench`. `cargo test
/// --workspace` (as `.ci/run` runs it) builds both; `cargo test -p kvfs-bench` alone
/// does not build `kvfs`.
fn require_kvfs_binary() {
    let kvfs = std::path::Path::new(env!("CARGO_BIN_EXE_kvfs-bench")).with_file_name("kvfs");
    assert!(
        kvfs.exists(),
        "{} is missing: build it first (cargo build -p kvfs), or run cargo test --workspace",
        kvfs.display()
    );
}

/// Run `kvfs-bench ARGS --out DIR`; assert success; return stdout and the CSV `name`.
fn run_bench(args: &[&str], csv: &str) -> (String, String) {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_kvfs-bench"))
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout).to_string();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let csv = std::fs::read_to_string(out.path().join(format!("{csv}.csv"))).unwrap();
    (stdout, csv)
}

#[test]
fn s3_put_benchmark_runs_and_writes_csv() {
    let (stdout, csv) = run_bench(
        &[
            "s3-put",
            "--pairs",
            "5",
            "--sizes",
            "32",
            "--concurrency",
            "1,2",
            "--put-latency-ms",
            "1",
            "--get-latency-ms",
            "1",
        ],
        "s3_put",
    );
    assert!(stdout.contains("S3 baseline"), "{stdout}");
    assert!(stdout.contains("requests_per_pair"), "{stdout}");
    assert!(csv.starts_with(
        "op,size_bytes,concurrency,pairs,seconds,pairs_per_s,p50_ms,p90_ms,p99_ms,requests_per_pair,usd_per_million\n"
    ));
    // put and get at two concurrencies, one object per pair.
    assert_eq!(csv.lines().count(), 5, "{csv}");
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[9], "1.000", "{line}");
    }
}

#[test]
fn kv_benchmark_runs_and_writes_csv() {
    let (stdout, csv) = run_bench(
        &[
            "kv",
            "--pairs",
            "5",
            "--sizes",
            "32",
            "--concurrency",
            "1,2",
            "--segment-bytes",
            "262144",
            "--flush-interval-ms",
            "100",
            "--put-latency-ms",
            "1",
            "--get-latency-ms",
            "1",
        ],
        "kv",
    );
    assert!(stdout.contains("ratio_to_s3_put"), "{stdout}");
    assert!(stdout.contains("nondurable"), "{stdout}");
    assert!(stdout.contains("durable"), "{stdout}");
    assert!(csv.starts_with(
        "mode,size_bytes,segment_bytes,flush_interval_ms,concurrency,pairs,seconds,pairs_per_s,p50_ms,p99_ms,puts_per_pair,requests_per_pair,usd_per_million,s3_put_pairs_per_s,ratio_to_s3_put\n"
    ));
    // One non-durable row and two durable rows.
    assert_eq!(csv.lines().count(), 4, "{csv}");
}

#[test]
fn recovery_benchmark_runs_and_writes_csv() {
    let (stdout, csv) = run_bench(
        &[
            "recovery",
            "--keys",
            "100,1000",
            "--tail-puts",
            "0,200",
            "--tail-base-keys",
            "100",
        ],
        "recovery",
    );
    assert!(stdout.contains("open_read_only_s"), "{stdout}");
    assert!(
        csv.starts_with("keys,tail_puts,open_read_only_s,open_writer_s,index_heap_bytes_per_key\n")
    );
    assert_eq!(csv.lines().count(), 5);
}

#[test]
fn crash_benchmark_runs_and_loses_nothing() {
    // The mount mode needs FUSE; CI installs fuse3. Skipped only without /dev/fuse.
    let mount_trials = if std::path::Path::new("/dev/fuse").exists() {
        require_kvfs_binary();
        "2"
    } else {
        eprintln!("/dev/fuse missing: crash benchmark without its mount mode");
        "0"
    };
    let (stdout, csv) = run_bench(
        &[
            "crash",
            "--engine-trials",
            "4",
            "--mount-trials",
            mount_trials,
            "--max-kill-delay-ms",
            "300",
        ],
        "crash",
    );
    assert!(stdout.contains("writes_lost"), "{stdout}");
    assert!(csv.starts_with(
        "mode,store,trials,acked_writes_checked,writes_lost,not_prefix_trials,recovery_p50_ms,recovery_max_ms\n"
    ));
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), if mount_trials == "0" { 1 } else { 2 }, "{csv}");
    for row in &rows {
        assert_eq!(row[4], "0", "writes lost: {csv}");
        assert_eq!(row[5], "0", "not a prefix: {csv}");
    }
}

#[test]
fn faults_benchmark_runs_and_fails_cleanly_in_a_long_outage() {
    let (stdout, csv) = run_bench(
        &[
            "faults",
            "--seconds",
            "1.5",
            "--outage-secs",
            "0.8",
            "--short-retry-secs",
            "1",
            "--put-latency-ms",
            "2",
            "--get-latency-ms",
            "1",
            "--stall-ms",
            "200",
        ],
        "faults",
    );
    assert!(stdout.contains("lost_after_reopen"), "{stdout}");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let scenarios: Vec<&str> = rows
        .iter()
        .map(|l| l.split(',').next().unwrap_or(""))
        .collect();
    assert_eq!(
        scenarios,
        ["none", "errors", "stalls", "outage", "outage_beyond_retry"],
        "{csv}"
    );
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for row in &rows {
        // Only the error message (the last column) may be quoted and hold commas.
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells[col("lost_after_reopen")], "0", "{row}");
        let peak: u64 = cells[col("peak_unflushed_bytes")].parse().unwrap();
        let bound: u64 = cells[col("unflushed_bound_bytes")].parse().unwrap();
        // One entry may go past the bound when the buffer is otherwise empty.
        assert!(peak <= bound + 4096, "{row}");
    }
    let last = rows.last().unwrap();
    assert!(
        last.contains("gave up"),
        "the sync in a long outage failed: {last}"
    );
    let errors: Vec<&str> = rows[1].split(',').collect();
    assert_ne!(errors[col("retries")], "0", "errors were retried: {csv}");
}

#[test]
fn gc_benchmark_runs_and_writes_csv() {
    let (stdout, csv) = run_bench(
        &[
            "gc",
            "--keys",
            "500",
            "--seconds",
            "3",
            "--overwrites-per-sec",
            "500",
            "--scan-files",
            "300",
            "--put-latency-ms",
            "1",
            "--get-latency-ms",
            "1",
        ],
        "gc_scan",
    );
    assert!(stdout.contains("steady_space_amp_median"), "{stdout}");
    assert!(
        csv.starts_with("phase,files,gets,get_bytes,seconds,files_per_get\n"),
        "{csv}"
    );
    assert!(csv.contains("after_compaction"), "{csv}");
}

#[test]
fn fs_load_experiments_run_and_write_csv() {
    require_kvfs_binary();
    let (stdout, csv) = run_bench(
        &[
            "fs",
            "--experiments",
            "rename,readahead,big-files",
            "--rename-files",
            "200",
            "--huge-rename-files",
            "2000",
            "--read-mib",
            "8",
            "--read-get-ms",
            "1",
            "--big-mib",
            "16",
        ],
        "fs_load",
    );
    assert!(stdout.contains("The namespace under load"), "{stdout}");
    assert!(
        csv.starts_with("experiment,measure,value,unit,target\n"),
        "{csv}"
    );
    for measure in [
        "log_bytes",
        "huge_rename_ms",
        "cold_sequential_read",
        "rss_growth",
    ] {
        assert!(csv.contains(measure), "{measure} missing from:\n{csv}");
    }
}

#[test]
fn follow_benchmark_runs_and_writes_csv() {
    require_kvfs_binary();
    let (stdout, csv) = run_bench(
        &[
            "follow",
            "--samples",
            "3",
            "--intervals-ms",
            "100,300",
            "--idle-secs",
            "2",
            "--put-latency-ms",
            "1",
            "--get-latency-ms",
            "1",
        ],
        "follow",
    );
    assert!(stdout.contains("following a writer mount"), "{stdout}");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    for row in rows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells[1], "3", "{row}");
        let gets: f64 = cells[5].parse().unwrap();
        assert!(gets > 0.0, "an idle follower still polls: {row}");
        assert_eq!(cells[6], "0", "no LIST while idle: {row}");
    }
}

#[test]
fn encoding_benchmark_runs_and_writes_csv() {
    // The mount runs need FUSE; CI installs fuse3. Skipped only without /dev/fuse.
    let mut args = vec![
        "encoding",
        "--quick",
        "--engine-mib",
        "2",
        "--text-mib",
        "1",
        "--mount-mib",
        "2",
        "--sync-mib",
        "1",
    ];
    let mount = std::path::Path::new("/dev/fuse").exists();
    if mount {
        require_kvfs_binary();
    } else {
        eprintln!("/dev/fuse missing: encoding benchmark without its mount runs");
        args.push("--no-mount");
    }
    let (stdout, csv) = run_bench(&args, "encoding");
    assert!(stdout.contains("ratio_to_plain"), "{stdout}");
    assert!(
        csv.starts_with(
            "mode,phase,mb_per_s,ratio_to_plain,stored_per_plain_bytes,stored_mib,runs\n"
        ),
        "{csv}"
    );
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // Engine write and read of mixed and of text-only data, and the mount's write
    // and read: each in four modes.
    let phases = if mount { 6 } else { 4 };
    assert_eq!(rows.len(), 4 * phases, "{csv}");
    let mut modes: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    modes.sort_unstable();
    modes.dedup();
    assert_eq!(
        modes,
        ["encrypted", "encrypted+zstd", "plain", "zstd"],
        "{csv}"
    );
    for row in &rows {
        let rate: f64 = row[2].parse().unwrap();
        assert!(rate > 0.0, "{row:?}");
        let stored_per_plain: f64 = row[4].parse().unwrap();
        match row[0] {
            "plain" => assert_eq!(row[3], "1.00", "{row:?}"),
            // Half the mixed data is log text, which zstd shrinks several times.
            "zstd" | "encrypted+zstd" => assert!(stored_per_plain < 0.8, "{row:?}"),
            _ => assert!(stored_per_plain >= 0.99, "{row:?}"),
        }
    }
}

#[test]
fn extract_benchmark_runs_and_writes_csv() {
    require_kvfs_binary();
    let (stdout, csv) = run_bench(&["extract", "--mib", "1", "--tiny-files", "200"], "extract");
    assert!(stdout.contains("content put"), "{stdout}");
    assert!(
        csv.starts_with("tree,measure,count,bytes,per_data_byte\n"),
        "{csv}"
    );
    for tree in ["source", "tiny"] {
        let ratio = |measure: &str| -> f64 {
            let row = csv
                .lines()
                .find(|l| l.starts_with(&format!("{tree},{measure},")))
                .unwrap_or_else(|| panic!("no {tree} {measure} row: {csv}"));
            row.rsplit(',').next().unwrap().parse().unwrap()
        };
        // Each file's content is put once.
        assert_eq!(ratio("content put"), 1.0, "{csv}");
        assert!(ratio("segments") >= 1.0, "{csv}");
    }
}

#[test]
fn workload_benchmark_runs_and_writes_csv() {
    require_kvfs_binary();
    let (stdout, csv) = run_bench(
        &[
            "workload",
            "--quick",
            "--no-juicefs",
            "--put-latency-ms",
            "2",
            "--get-latency-ms",
            "1",
        ],
        "workload",
    );
    assert!(csv.starts_with("system,step,seconds,puts,gets,vs_local\n"));
    // Every step on both; bindfs's rows come when it is installed.
    let git = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut steps = vec!["extract", "grep", "read warm", "read cold", "rm"];
    if git {
        steps.push("git clone");
    }
    for step in &steps {
        assert!(stdout.contains(step), "{step} missing from:\n{stdout}");
    }
    for system in ["local", "kvfs"] {
        for step in &steps {
            let row = format!("{system},{step},");
            assert!(csv.contains(&row), "{row} missing from:\n{csv}");
        }
    }
    // Reading back after a remount with the disk cache kept costs no GET.
    let warm = csv
        .lines()
        .find(|l| l.starts_with("kvfs,read warm,"))
        .unwrap_or_else(|| panic!("no kvfs warm read in:\n{csv}"));
    assert_eq!(warm.split(',').nth(4), Some("0"), "{warm}");
}

#[test]
fn fio_benchmark_runs_and_writes_csv() {
    require_kvfs_binary();
    let (stdout, csv) = run_bench(
        &[
            "fio",
            "--quick",
            "--files",
            "20",
            "--systems",
            "kvfs",
            "--put-latency-ms",
            "2",
            "--get-latency-ms",
            "1",
        ],
        "fio",
    );
    for step in ["create", "write", "read warm", "read cold"] {
        assert!(stdout.contains(step), "{step} missing from:\n{stdout}");
    }
    assert!(csv.starts_with("system,step,files,seconds,files_per_s,puts,gets,vs_bindfs\n"));
    assert_eq!(csv.lines().count(), 5, "{csv}");
    // 4 jobs of 20 files each, and the files written were uploaded by the unmount.
    let write = csv
        .lines()
        .find(|l| l.starts_with("kvfs,write,"))
        .unwrap_or_else(|| panic!("no kvfs write in:\n{csv}"));
    let cells: Vec<&str> = write.split(',').collect();
    assert_eq!(cells[2], "80", "{write}");
    assert_ne!(cells[5], "0", "{write}");
}
