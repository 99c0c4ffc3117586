//! Extended attributes: one record per name, `\0a` + ino + name (see `keys`).
//!
//! A value of up to [`INLINE_XATTR`] bytes is kept in the record's metadata, so it
//! is in memory (the kernel asks for `security.capability` on every write and `ls`
//! for ACLs on every file; those answers need no request); a larger one is the
//! record's value. Every namespace is stored alike: `user.*`, `trusted.*`,
//! `security.*` and `system.posix_acl_*` (so `cp -a`, `rsync -AX` and `tar
//! --xattrs` keep ACLs). Setting or removing one changes the inode's ctime.

use std::ops::Bound;

use super::error::{FsError, FsResult};
use super::keys::{xattr_key, xattr_name, xattr_prefix};
use super::namespace::{now, ops_len, Namespace};
use crate::db::{prefix_successor, BatchOp};

/// Longest attribute name (Linux's `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest attribute value (Linux's `XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Values up to this size live in the record's metadata.
const INLINE_XATTR: usize = 254;
const IN_META: u8 = 0;
const IN_VALUE: u8 = 1;

/// `XATTR_CREATE` / `XATTR_REPLACE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrFlags {
    /// Fail with `Exists` if the name is set.
    pub create: bool,
    /// Fail with `NoData` if the name is not set.
    pub replace: bool,
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name.contains(&0) {
        return Err(FsError::Invalid("extended attribute name"));
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    Ok(())
}

impl Namespace {
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
    ) -> FsResult<()> {
        self.writable()?;
        check_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooBig);
        }
        let key = xattr_key(ino, name);
        let record = if value.len() <= INLINE_XATTR {
            let mut meta = vec![IN_META];
            meta.extend_from_slice(value);
            BatchOp::PutMeta {
                key,
                meta,
                value: Vec::new(),
            }
        } else {
            BatchOp::PutMeta {
                key,
                meta: vec![IN_VALUE],
                value: value.to_vec(),
            }
        };
        self.change_xattr(ino, name, Some(record), flags).await
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        check_name(name)?;
        self.change_xattr(ino, name, None, XattrFlags::default())
            .await
    }

    /// Write (or delete, with `record` `None`) one attribute and the inode's ctime.
    async fn change_xattr(
        &self,
        ino: u64,
        name: &[u8],
        record: Option<BatchOp>,
        flags: XattrFlags,
    ) -> FsResult<()> {
        let key = xattr_key(ino, name);
        let mut room = 0;
        loop {
            if room > 0 {
                self.db.wait_for_room(room).await?;
            }
            let _held = self.locks.take(false, &[ino]);
            let state = self.state_of(ino);
            let mut t = self.touch(ino, state.as_ref())?;
            let exists = self.db.info(&key).is_some();
            match (&record, exists) {
                (Some(_), true) if flags.create => return Err(FsError::Exists),
                (Some(_), false) if flags.replace => return Err(FsError::NoData),
                (None, false) => return Err(FsError::NoData),
                _ => {}
            }
            t.attr.ctime = now();
            let mut ops = vec![match &record {
                Some(r) => r.clone(),
                None => BatchOp::Delete(key.clone()),
            }];
            ops.push(t.op());
            if self.db.try_write_batch(&ops)? {
                t.written();
                return Ok(());
            }
            room = ops_len(&ops);
        }
    }

    /// The value of attribute `name` of `ino`.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        check_name(name)?;
        self.attr_now(ino)?.ok_or(FsError::NotFound)?;
        let key = xattr_key(ino, name);
        let info = self.db.info(&key).ok_or(FsError::NoData)?;
        match info.meta.as_deref() {
            Some([IN_META, rest @ ..]) => Ok(rest.to_vec()),
            Some([IN_VALUE]) => Ok(self.db.get(&key).await?.ok_or(FsError::NoData)?.to_vec()),
            _ => Err(FsError::Invalid("corrupt extended attribute record")),
        }
    }

    /// The names of the attributes of `ino`, in byte order.
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        self.attr_now(ino)?.ok_or(FsError::NotFound)?;
        Ok(self
            .xattr_keys(ino)
            .into_iter()
            .filter_map(|k| xattr_name(ino, &k).map(<[u8]>::to_vec))
            .collect())
    }

    /// The record keys of every attribute of `ino` (to delete with the inode).
    pub(super) fn xattr_keys(&self, ino: u64) -> Vec<Vec<u8>> {
        let prefix = xattr_prefix(ino);
        let end = prefix_successor(&prefix);
        self.db
            .scan_info(
                Bound::Included(prefix.as_slice()),
                end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                usize::MAX,
            )
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// Delete operations for the attributes of `ino`.
    pub(super) fn xattr_deletes(&self, ino: u64, ops: &mut Vec<BatchOp>) {
        ops.extend(self.xattr_keys(ino).into_iter().map(BatchOp::Delete));
    }
}
