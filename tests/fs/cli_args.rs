//! No command line makes `kvfs` panic: random combinations of commands, odd paths,
//! ranges and settings either work (exit 0), fail with a message (exit 1), or are
//! refused as a usage error (exit 2).

use std::process::{Command, Stdio};

use proptest::prelude::*;

use crate::common::mount::KVFS;

const COMMANDS: &[&str] = &[
    "put", "get", "delete", "scan", "stats", "fsck", "gc", "compact",
];

fn odd_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("/abs".to_string()),
        Just("a//b".to_string()),
        Just("dir".to_string()),
        Just("dir/child".to_string()),
        Just("trail/".to_string()),
        Just("new\nline".to_string()),
        Just("z".to_string()),
        Just("a".to_string()),
        Just("x".repeat(300)),
        "[a-c/]{0,6}",
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551615".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("4096".to_string()),
        Just("abc".to_string()),
    ]
}

fn option() -> impl Strategy<Value = Vec<String>> {
    let with_text = |flag: &'static str| odd_text().prop_map(move |t| vec![flag.to_string(), t]);
    let with_num = |flag: &'static str| number().prop_map(move |n| vec![flag.to_string(), n]);
    prop_oneof![
        with_text("--prefix"),
        with_text("--start"),
        with_text("--end"),
        with_num("--limit"),
        Just(vec!["--keys-only".to_string()]),
        with_num("--retry-timeout-secs"),
        with_num("--segment-bytes"),
        with_num("--flush-interval-ms"),
        with_num("--cache-bytes"),
        with_num("--max-unflushed-bytes"),
        with_num("--round-bytes"),
        with_num("--gc-grace-secs"),
        with_text("--compression"),
        Just(vec!["--compression".to_string(), "zstd".to_string()]),
        with_text("--encryption-key-file"),
        Just(vec![
            "--encryption-key-file".to_string(),
            "/dev/null".to_string()
        ]),
        Just(vec!["-v".to_string()]),
    ]
}

fn command_line() -> impl Strategy<Value = (usize, Vec<String>, Vec<Vec<String>>)> {
    (
        0..COMMANDS.len(),
        proptest::collection::vec(odd_text(), 0..3),
        proptest::collection::vec(option(), 0..4),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn no_command_line_panics((cmd, positional, options) in command_line()) {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        // A store with a file and a directory, so reads find something.
        for (k, v) in [("dir/child", "1"), ("a", "2")] {
            let ok = Command::new(KVFS)
                .args(["put", store.to_str().unwrap(), k, v])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            prop_assert!(ok.status.success());
        }
        let mut args = vec![COMMANDS[cmd].to_string(), store.to_str().unwrap().to_string()];
        args.extend(positional);
        // gc and compact wait out the grace period before deleting (as long as asked:
        // a random one could be hours): no grace for them.
        let collects = matches!(COMMANDS[cmd], "gc" | "compact");
        let options: Vec<String> = options
            .into_iter()
            .filter(|o| !(collects && o[0] == "--gc-grace-secs"))
            .flatten()
            .collect();
        if collects {
            args.extend(["--gc-grace-secs".to_string(), "0".to_string()]);
        }
        args.extend(options);

        let out = Command::new(KVFS)
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        prop_assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{args:?}: status {:?}: {err}",
            out.status
        );
        prop_assert!(!err.contains("panicked"), "{args:?}: {err}");
        // The store is still sound.
        let fsck = Command::new(KVFS)
            .args(["fsck", store.to_str().unwrap()])
            .output()
            .unwrap();
        prop_assert!(fsck.status.success(), "after {args:?}: {}", String::from_utf8_lossy(&fsck.stdout));
    }
}
