//! Keys as paths: the key-value view of the namespace, behind `kvfs put|get|delete|
//! scan`. A key is the path of a regular file relative to the mount root
//! (`users/42/profile.json`): `put` creates the missing directories, `get` reads the
//! file whatever its size, `scan` lists regular files in byte order of their paths,
//! exactly as the same keys would sort as strings.

use std::ops::Bound;

use super::attr::{Attr, Dirent, Kind};
use super::error::{FsError, FsResult};
use super::keys::{check_name, inode_prefix, key_of, KeyOf, ROOT_INO, SUPER_KEY};
use super::namespace::{decode_attr, name_err, Namespace};
use crate::db::{Db, FileCounts};

/// Bytes written or read per call when a key's content is moved whole.
const CHUNK: usize = 1 << 20;

/// The components of a key, checked: no leading or trailing `/`, no empty, `.` or
/// `..` component.
pub fn split_key(key: &[u8]) -> FsResult<Vec<&[u8]>> {
    if key.is_empty() {
        return Err(FsError::Invalid("a key must not be empty"));
    }
    if key.starts_with(b"/") || key.ends_with(b"/") {
        return Err(FsError::Invalid(
            "a key is a path relative to the root: no leading or trailing '/'",
        ));
    }
    key.split(|b| *b == b'/')
        .map(|c| check_name(c).map(|_| c).map_err(name_err))
        .collect::<FsResult<Vec<_>>>()
        .map_err(|e| match e {
            FsError::Invalid(_) => {
                FsError::Invalid("a key's components must not be empty, '.' or '..'")
            }
            e => e,
        })
}

/// Inode records read from the index at a time by [`count_files`].
const COUNT_PAGE: usize = 10_000;

/// How many files, directories, symlinks and special files the file system in `db`
/// has (each inode once, whatever its number of names; the root directory counts),
/// from the index in memory; `None` if `db` holds no file system.
pub fn count_files(db: &Db) -> FsResult<Option<FileCounts>> {
    if db.info(SUPER_KEY).is_none() {
        return Ok(None);
    }
    let prefix = inode_prefix();
    let mut counts = FileCounts::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = db.scan_info_prefix(&prefix, after.as_deref(), COUNT_PAGE);
        let n = page.len();
        for (key, info) in &page {
            let KeyOf::Inode(ino) = key_of(key) else {
                continue;
            };
            match decode_attr(ino, info)?.kind {
                Kind::File => counts.files += 1,
                Kind::Dir => counts.directories += 1,
                Kind::Symlink => counts.symlinks += 1,
                Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => counts.special += 1,
            }
        }
        match page.into_iter().last() {
            Some((k, _)) if n == COUNT_PAGE => after = Some(k),
            _ => return Ok(Some(counts)),
        }
    }
}

impl Namespace {
    /// The attributes of the file or directory at `key` (`""` is the root).
    pub fn resolve(&self, key: &[u8]) -> FsResult<Attr> {
        if key.is_empty() {
            return self.stored_attr(ROOT_INO)?.ok_or(FsError::NotFound);
        }
        let mut ino = ROOT_INO;
        for c in split_key(key)? {
            let d = self.entry(ino, c)?.ok_or(FsError::NotFound)?;
            ino = d.ino;
        }
        self.attr_now(ino)?.ok_or(FsError::NotFound)
    }

    /// Store `data` as the content of the file at `key`, creating it and its
    /// directories as needed (not durable until [`Namespace::sync_all`]).
    pub async fn put_file(&self, key: &[u8], data: &[u8], owner: (u32, u32)) -> FsResult<()> {
        let comps = split_key(key)?;
        let (name, dirs) = comps.split_last().ok_or(FsError::Invalid("empty key"))?;
        let mut dir = ROOT_INO;
        for c in dirs {
            dir = match self.entry(dir, c)? {
                Some(Dirent {
                    ino,
                    kind: Kind::Dir,
                }) => ino,
                Some(_) => return Err(FsError::NotDir),
                None => match self.mkdir(dir, c, 0o755, owner).await {
                    Ok(a) => a.ino,
                    Err(FsError::Exists) => self.entry(dir, c)?.ok_or(FsError::NotFound)?.ino,
                    Err(e) => return Err(e),
                },
            };
        }
        let ino = match self.entry(dir, name)? {
            Some(Dirent {
                ino,
                kind: Kind::File,
            }) => ino,
            Some(Dirent {
                kind: Kind::Dir, ..
            }) => return Err(FsError::IsDir),
            Some(_) => return Err(FsError::Invalid("not a regular file")),
            None => self.create(dir, name, 0o644, owner).await?.ino,
        };
        self.open(ino, true).await?;
        let mut written = Ok(());
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            if let Err(e) = self.write(ino, (i * CHUNK) as u64, chunk).await {
                written = Err(e);
                break;
            }
        }
        let released = self.release(ino).await;
        written.and(released)
    }

    /// The content of the regular file at `key`, handed to `sink` in chunks; its size.
    pub async fn read_file(
        &self,
        key: &[u8],
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> FsResult<Option<u64>> {
        let attr = match self.resolve(key) {
            Ok(a) => a,
            Err(FsError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        match attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("not a regular file")),
        }
        let ino = attr.ino;
        self.open(ino, false).await?;
        let mut offset = 0u64;
        let result = loop {
            match self.read(ino, offset, CHUNK as u32).await {
                Ok(b) if b.is_empty() => break Ok(Some(offset)),
                Ok(b) => {
                    offset += b.len() as u64;
                    if let Err(e) = sink(&b) {
                        break Err(FsError::Output(e.to_string()));
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let released = self.release(ino).await;
        let out = result?;
        released?;
        Ok(out)
    }

    /// The whole content of the file at `key` (for small files and tests).
    pub async fn get_file(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let found = self
            .read_file(key, |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .await?;
        Ok(found.map(|_| out))
    }

    /// Remove the file at `key`; `false` if there was none.
    pub async fn remove_file(&self, key: &[u8]) -> FsResult<bool> {
        let comps = split_key(key)?;
        let (name, dirs) = comps.split_last().ok_or(FsError::Invalid("empty key"))?;
        let mut dir = ROOT_INO;
        for c in dirs {
            match self.entry(dir, c)? {
                Some(d) => dir = d.ino,
                None => return Ok(false),
            }
        }
        match self.unlink(dir, name).await {
            Ok(()) => Ok(true),
            Err(FsError::NotFound) | Err(FsError::NotDir) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Regular files whose keys lie in `[lo, hi)`, in key order, at most `limit`.
    pub fn scan_files(
        &self,
        lo: Bound<&[u8]>,
        hi: Option<&[u8]>,
        limit: usize,
    ) -> FsResult<Vec<(Vec<u8>, Attr)>> {
        struct Frame {
            prefix: Vec<u8>,
            entries: Vec<(Vec<u8>, Dirent)>,
            next: usize,
        }
        let below_lo = |key: &[u8]| match lo {
            Bound::Included(l) => key < l,
            Bound::Excluded(l) => key <= l,
            Bound::Unbounded => false,
        };
        let frame = |ns: &Namespace, dir: u64, prefix: Vec<u8>| -> FsResult<Frame> {
            let mut entries = ns.entries(dir, None, usize::MAX)?;
            // A directory's keys all start with `name/`: sort it as that.
            let sort_key = |(n, d): &(Vec<u8>, Dirent)| {
                let mut k = n.clone();
                if d.kind == Kind::Dir {
                    k.push(b'/');
                }
                k
            };
            entries.sort_by_cached_key(sort_key);
            Ok(Frame {
                prefix,
                entries,
                next: 0,
            })
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut stack = vec![frame(self, ROOT_INO, Vec::new())?];
        while let Some(f) = stack.last_mut() {
            let Some((name, d)) = f.entries.get(f.next).cloned() else {
                stack.pop();
                continue;
            };
            f.next += 1;
            let mut key = f.prefix.clone();
            key.extend_from_slice(&name);
            match d.kind {
                Kind::Dir => {
                    key.push(b'/');
                    if hi.is_some_and(|h| key.as_slice() >= h) {
                        break;
                    }
                    // Every key below starts with `key`: skip the subtree if all of
                    // them sort before the lower bound.
                    let lo_inside = match lo {
                        Bound::Included(l) | Bound::Excluded(l) => l.starts_with(&key),
                        Bound::Unbounded => true,
                    };
                    if below_lo(&key) && !lo_inside {
                        continue;
                    }
                    let sub = frame(self, d.ino, key)?;
                    stack.push(sub);
                }
                Kind::File => {
                    if hi.is_some_and(|h| key.as_slice() >= h) {
                        break;
                    }
                    if below_lo(&key) {
                        continue;
                    }
                    if let Some(attr) = self.attr_now(d.ino)? {
                        out.push((key, attr));
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
