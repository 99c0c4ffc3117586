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
