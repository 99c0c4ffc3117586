//! The commands behind `kvfs put|get|delete|scan|stats|fsck`.

use std::io::{Read, Write};
use std::ops::Bound;

use kvfs::db::{Db, Error, Options};

use super::Command;

/// Run one command; returns the exit status.
pub async fn run(cmd: Command) -> Result<i32, Error> {
    match cmd {
        Command::Put {
            store,
            key,
            value,
            tuning,
        } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf).map_err(|e| {
                        Error::InvalidKey(format!("cannot read the value from stdin: {e}"))
                    })?;
                    buf
                }
            };
            kvfs::db::validate_key(key.as_bytes())?;
            let db = Db::open(&store, tuning.options()).await?;
            let result = db.put(key.as_bytes(), &value).await;
            finish_write(&db, result).await?;
            Ok(0)
        }
        Command::Delete { store, key, tuning } => {
            kvfs::db::validate_key(key.as_bytes())?;
            let db = Db::open(&store, tuning.options()).await?;
            let existed = db.get(key.as_bytes()).await?.is_some();
            let result = db.delete(key.as_bytes()).await;
            finish_write(&db, result).await?;
            if !existed {
                eprintln!("kvfs: note: key {key:?} did not exist");
            }
            Ok(0)
        }
        Command::Get { store, key } => {
            kvfs::db::validate_key(key.as_bytes())?;
            let db = Db::open(&store, Options::read_only()).await?;
            match db.get(key.as_bytes()).await? {
                Some(v) => {
                    write_stdout(&v)?;
                    Ok(0)
                }
                None => {
                    eprintln!("kvfs: key not found: {key}");
                    Ok(1)
                }
            }
        }
        Command::Scan {
            store,
            prefix,
            start,
            end,
            limit,
            keys_only,
        } => {
            let db = Db::open(&store, Options::read_only()).await?;
            let limit = limit.unwrap_or(usize::MAX);
            // Combine --prefix with --start/--end: the tighter bound wins.
            let mut lo = start.map(String::into_bytes);
            let mut hi = end.map(String::into_bytes);
            if let Some(p) = prefix {
                let p = p.into_bytes();
                if lo.as_ref().is_none_or(|l| *l < p) {
                    lo = Some(p.clone());
                }
                if let Some(succ) = kvfs::db::prefix_successor(&p) {
                    if hi.as_ref().is_none_or(|h| *h > succ) {
                        hi = Some(succ);
                    }
                }
            }
            let lo_b = lo.as_deref().map_or(Bound::Unbounded, Bound::Included);
            let hi_b = hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            // Page through the range so memory stays bounded on large stores.
            let mut remaining = limit;
            let mut cursor: Option<Vec<u8>> = None;
            while remaining > 0 {
                let page = remaining.min(1000);
                let from = match &cursor {
                    Some(c) => Bound::Excluded(c.as_slice()),
                    None => lo_b,
                };
                let rows = db.scan(from, hi_b, page, keys_only).await?;
                let n = rows.len();
                for (k, v) in &rows {
                    let mut line = k.clone();
                    if let Some(v) = v {
                        line.push(b'\t');
                        line.extend_from_slice(v);
                    }
                    line.push(b'\n');
                    out.write_all(&line).map_err(stdout_err)?;
                }
                remaining -= n;
                match rows.into_iter().last() {
                    Some((k, _)) if n == page => cursor = Some(k),
                    _ => break,
                }
            }
            out.flush().map_err(stdout_err)?;
            Ok(0)
        }
        Command::Stats { store } => {
            let db = Db::open(&store, Options::read_only()).await?;
            let stats = db.stats().await?;
            println!("{stats}");
            Ok(0)
        }
        Command::Fsck { store } => {
            let db = Db::open(&store, Options::read_only()).await?;
            let mut last = std::time::Instant::now();
            let report = db
                .fsck(&mut |msg| {
                    if last.elapsed().as_secs() >= 1 {
                        eprintln!("fsck: {msg}");
                        last = std::time::Instant::now();
                    }
                })
                .await?;
            println!(
                "checked {} objects ({} bytes): {} segments, {} checkpoints, {} manifests, {} entries; {} live keys verified",
                report.objects,
                report.bytes,
                report.segments,
                report.checkpoints,
                report.manifests,
                report.entries,
                report.keys_verified
            );
            if report.is_clean() {
                println!("no problems found");
                Ok(0)
            } else {
                for i in &report.issues {
                    println!("PROBLEM {}: {}", i.object, i.problem);
                }
                println!("{} problems found", report.issues.len());
                Ok(1)
            }
        }
    }
}

/// Make a CLI write durable and give the store back; report the first failure.
async fn finish_write(db: &Db, result: Result<(), Error>) -> Result<(), Error> {
    let result = match result {
        Ok(()) => db.sync().await,
        Err(e) => Err(e),
    };
    let closed = db.close().await;
    result?;
    closed
}

fn stdout_err(e: std::io::Error) -> Error {
    Error::Inconsistent(format!("cannot write to standard output: {e}"))
}

fn write_stdout(data: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(data).map_err(stdout_err)?;
    out.flush().map_err(stdout_err)
}
