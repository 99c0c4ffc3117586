//! Extended attributes: one record per name, `\0a` + ino + name (see `keys`).
//!
//! A value of up to [`INLINE_XATTR`] bytes is kept in the record's metadata, so it
//! is in memory (the kernel asks for `security.capability` on every write and `ls`
//! for ACLs on every file; those answers need no request); a larger one is the
//! record's value. Every namespace is stored alike: `user.*`, `trusted.*`,
//! `security.*` and `system.posix_acl_*` (so `cp -a`, `rsync -AX` and `tar
//! --xattrs` keep ACLs). Setting or removing one changes the inode's ctime.

use super::change::Step;
use super::error::{FsError, FsResult};
use super::keys::{xattr_key, xattr_name, xattr_prefix};
use super::namespace::{now, Namespace};
use crate::db::BatchOp;

/// Longest attribute name (Linux's `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest attribute value (Linux's `XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Values up to this size live in the record's metadata.
const INLINE_XATTR: usize = 254;
const IN_META: u8 = 0;
const IN_VALUE: u8 = 1;

/// The access ACL: setting it sets the permission bits it implies (the kernel
/// leaves that to the file system); an ACL that says no more than the mode is not
/// kept, as on a local file system.
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// The permission bits (`rwxrwxrwx`) an access ACL implies, and whether the ACL is
/// equivalent to them (only the owner, group and other entries).
pub fn acl_mode(value: &[u8]) -> FsResult<(u16, bool)> {
    let bad = || FsError::Invalid("malformed POSIX ACL");
    let (head, entries) = value.split_at_checked(4).ok_or_else(bad)?;
    if u32::from_le_bytes(head.try_into().map_err(|_| bad())?) != ACL_VERSION
        || entries.len() % 8 != 0
    {
        return Err(bad());
    }
    let (mut user, mut group, mut other, mut mask) = (None, None, None, None);
    let mut extended = false;
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]) & 7;
        match tag {
            ACL_USER_OBJ => user = Some(perm),
            ACL_GROUP_OBJ => group = Some(perm),
            ACL_OTHER => other = Some(perm),
            ACL_MASK => mask = Some(perm),
            0x02 | 0x08 => extended = true,
            _ => return Err(bad()),
        }
    }
    let (Some(u), Some(g), Some(o)) = (user, group, other) else {
        return Err(bad());
    };
    let g = mask.unwrap_or(g);
    Ok((u << 6 | g << 3 | o, !extended && mask.is_none()))
}

/// `XATTR_CREATE` / `XATTR_REPLACE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrFlags {
    /// Fail with `Exists` if the name is set.
    pub create: bool,
    /// Fail with `NoData` if the name is not set.
    pub replace: bool,
}

fn check_xattr_name(name: &[u8]) -> FsResult<()> {
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
        check_xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooBig);
        }
        let key = xattr_key(ino, name);
        let acl = if name == ACL_ACCESS {
            Some(acl_mode(value)?)
        } else {
            None
        };
        let record = if acl.is_some_and(|(_, equivalent)| equivalent) {
            // Says no more than the mode: only the mode changes.
            BatchOp::Delete(key)
        } else if value.len() <= INLINE_XATTR {
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
        self.change_xattr(ino, name, Some(record), flags, acl.map(|(m, _)| m))
            .await
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        check_xattr_name(name)?;
        self.change_xattr(ino, name, None, XattrFlags::default(), None)
            .await
    }

    /// Write (or delete, with `record` `None`) one attribute and the inode's ctime
    /// (and its permission bits, `mode`, for an access ACL).
    async fn change_xattr(
        &self,
        ino: u64,
        name: &[u8],
        record: Option<BatchOp>,
        flags: XattrFlags,
        mode: Option<u16>,
    ) -> FsResult<()> {
        let key = xattr_key(ino, name);
        self.change(|batch| {
            let _held = self.locks.take(false, &[ino]);
            let state = self.state_of(ino);
            let mut t = self.touch(ino, state.as_ref())?;
            let exists = self.db.info(&key).is_some();
            match (&record, exists) {
                (Some(_), true) if flags.create => return Err(FsError::Exists),
                (Some(_), false) if flags.replace => return Err(FsError::NoData),
                (None, false) => return Err(FsError::NoData),
                // An equivalent ACL replacing nothing: nothing to delete.
                (Some(BatchOp::Delete(_)), false) if mode.is_none() => return Err(FsError::NoData),
                _ => {}
            }
            t.attr.ctime = now();
            if let Some(m) = mode {
                t.set_perm((t.current_perm() & !0o777) | m);
            }
            let mut ops = vec![match &record {
                Some(r) => r.clone(),
                None => BatchOp::Delete(key.clone()),
            }];
            ops.push(t.op());
            if !batch.append(&ops)? {
                return Ok(Step::Retry);
            }
            t.written();
            Ok(Step::Done(()))
        })
        .await
    }

    /// The value of attribute `name` of `ino`.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        check_xattr_name(name)?;
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
        self.db
            .scan_info_prefix(&xattr_prefix(ino), None, usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// Delete operations for the attributes of `ino`.
    pub(super) fn xattr_deletes(&self, ino: u64, ops: &mut Vec<BatchOp>) {
        ops.extend(self.xattr_keys(ino).into_iter().map(BatchOp::Delete));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn access_acls_imply_a_mode() {
        let minimal = acl(&[(1, 7, 0), (4, 5, 0), (0x20, 1, 0)]);
        assert_eq!(acl_mode(&minimal).unwrap(), (0o751, true));
        let named = acl(&[
            (1, 6, 0),
            (2, 4, 1000),
            (4, 4, 0),
            (0x10, 6, 0),
            (0x20, 0, 0),
        ]);
        assert_eq!(acl_mode(&named).unwrap(), (0o660, false));
        assert!(acl_mode(&acl(&[(1, 6, 0), (0x20, 0, 0)])).is_err());
        assert!(acl_mode(&minimal[..minimal.len() - 1]).is_err());
        assert!(acl_mode(&[]).is_err());
        assert!(acl_mode(&acl(&[(0x40, 1, 0)])).is_err());
    }

    proptest! {
        #[test]
        fn acl_decoding_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = acl_mode(&data);
        }
    }
}
