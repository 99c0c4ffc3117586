//! The namespace: files, directories and symlinks on top of the engine, addressed by
//! inode number as a file-system adapter needs, with no FUSE types.
//!
//! Vocabulary:
//! - **node**: an inode the caller (the kernel) knows about: its number and current
//!   path. The node table is updated by renames, so a node follows its file.
//! - **file state**: the open, possibly dirty state of one file: its attributes, its
//!   content (small files) or dirty blocks (large files). Writes land in the file state;
//!   **commit** turns it into one atomic engine batch. Close commits (not durable);
//!   fsync commits and then syncs the engine (durable).
//! - **tree lock**: changes to the namespace structure (create, unlink, rename, …)
//!   take it exclusively; commits and reads take it shared, so a commit never writes
//!   to a path that a concurrent rename has just moved away.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::RwLock;

use super::attr::{Attr, Kind};
use super::error::{FsError, FsResult};
use super::keys::{
    block_key, block_number, block_prefix, check_name, child_path, dir_prefix, hashed_ino,
    is_reserved, NameError, BLOCK_SIZE, FIRST_INO, INLINE_MAX, ROOT_INO, SUPER_KEY,
};
use crate::db::{prefix_successor, BatchOp, Db, MAX_KEY_LEN};

/// Commit a file's dirty blocks once they exceed this many bytes.
const MAX_DIRTY_PER_FILE: usize = 8 << 20;
/// Largest file size accepted.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// Block reads in flight for one read request.
const READ_PARALLELISM: usize = 32;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
}

/// Attribute changes of a `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
}

/// How `rename` treats an existing destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `Exists` if the destination exists.
    pub noreplace: bool,
    /// Swap source and destination atomically; both must exist.
    pub exchange: bool,
}

/// File-system totals for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    pub files: u64,
    pub live_bytes: u64,
}

#[derive(Debug)]
struct Node {
    path: Vec<u8>,
    lookups: u64,
}

#[derive(Debug)]
struct FileState {
    attr: Attr,
    /// Inline content, when loaded.
    content: Option<Vec<u8>>,
    /// Blocks written since the last commit (blocked files).
    dirty_blocks: BTreeMap<u64, Vec<u8>>,
    /// Blocked file shrank: blocks at or past the new end are deleted at commit.
    shrunk_from: Option<u64>,
    dirty: bool,
    opens: u32,
    unlinked: bool,
}

impl FileState {
    fn dirty_bytes(&self) -> usize {
        self.dirty_blocks.values().map(Vec::len).sum()
    }
}

type SharedFile = Arc<tokio::sync::Mutex<FileState>>;

/// The file system's core: see the module documentation.
pub struct Namespace {
    db: Db,
    owner: (u32, u32),
    mounted_at: SystemTime,
    tree: RwLock<()>,
    nodes: Mutex<HashMap<u64, Node>>,
    files: Mutex<HashMap<u64, SharedFile>>,
    next_ino: Mutex<u64>,
}

fn name_err(e: NameError) -> FsError {
    match e {
        NameError::Invalid => FsError::Invalid("invalid file name"),
        NameError::TooLong => FsError::NameTooLong,
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Namespace {
    /// A namespace over an open engine. Files without recorded owners belong to
    /// `owner` (uid, gid).
    pub fn new(db: Db, owner: (u32, u32)) -> FsResult<Namespace> {
        let next = match db.info(SUPER_KEY).and_then(|i| i.meta) {
            Some(m) if m.len() == 8 => {
                u64::from_le_bytes(m[..8].try_into().unwrap_or([0; 8])).max(FIRST_INO)
            }
            _ => FIRST_INO,
        };
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                path: Vec::new(),
                lookups: 1,
            },
        );
        Ok(Namespace {
            db,
            owner,
            mounted_at: now(),
            tree: RwLock::new(()),
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            next_ino: Mutex::new(next),
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn writable(&self) -> FsResult<()> {
        if self.db.is_read_only() {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SharedFile>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path_of(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.nodes()
            .get(&ino)
            .map(|n| n.path.clone())
            .ok_or(FsError::NotFound)
    }

    fn remember(&self, attr: &Attr, path: &[u8], lookup: bool) {
        let mut nodes = self.nodes();
        let node = nodes.entry(attr.ino).or_insert_with(|| Node {
            path: path.to_vec(),
            lookups: 0,
        });
        node.path = path.to_vec();
        if lookup {
            node.lookups += 1;
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.nodes();
        if let Some(node) = nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 && !self.files().contains_key(&ino) {
                nodes.remove(&ino);
            }
        }
    }

    /// Attributes stored for `path`, from memory; `None` if nothing is there.
    fn stat_path(&self, path: &[u8]) -> FsResult<Option<Attr>> {
        if path.is_empty() {
            return Ok(Some(Attr::implicit_dir(
                ROOT_INO,
                self.owner,
                self.mounted_at,
            )));
        }
        if let Some(info) = self.db.info(path) {
            let attr = match info.meta {
                Some(m) => {
                    let mut a = Attr::decode(&m).map_err(|source| FsError::CorruptAttr {
                        path: String::from_utf8_lossy(path).to_string(),
                        source,
                    })?;
                    if !a.blocked && a.kind != Kind::Dir {
                        a.size = info.value_len as u64;
                    }
                    a
                }
                None => Attr::default_file(
                    hashed_ino(path),
                    info.value_len as u64,
                    self.owner,
                    self.mounted_at,
                ),
            };
            return Ok(Some(attr));
        }
        if self.has_children(path) {
            return Ok(Some(Attr::implicit_dir(
                hashed_ino(path),
                self.owner,
                self.mounted_at,
            )));
        }
        Ok(None)
    }

    fn has_children(&self, path: &[u8]) -> bool {
        let prefix = dir_prefix(path);
        let (start, end) = prefix_range(&prefix);
        !self
            .db
            .scan_info(bound_ref(&start), bound_ref(&end), 1)
            .is_empty()
    }

    /// The newest attributes of `ino` at `path`: an open file's state wins.
    async fn current_attr(&self, ino: u64, path: &[u8]) -> FsResult<Attr> {
        let state = self.files().get(&ino).cloned();
        if let Some(state) = state {
            return Ok(state.lock().await.attr);
        }
        self.stat_path(path)?.ok_or(FsError::NotFound)
    }

    async fn overlay(&self, mut attr: Attr) -> Attr {
        let state = self.files().get(&attr.ino).cloned();
        if let Some(state) = state {
            attr = state.lock().await.attr;
        }
        attr
    }

    async fn dir_path(&self, ino: u64) -> FsResult<Vec<u8>> {
        let path = self.path_of(ino)?;
        let attr = self.current_attr(ino, &path).await?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(path)
    }

    fn child(&self, parent: &[u8], name: &[u8]) -> FsResult<Vec<u8>> {
        check_name(name).map_err(name_err)?;
        let path = child_path(parent, name);
        if path.len() > MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        Ok(path)
    }

    /// Look up `name` in directory `parent`; counts as a kernel reference.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let _tree = self.tree.read().await;
        let dir = self.dir_path(parent).await?;
        let path = self.child(&dir, name)?;
        let attr = self.stat_path(&path)?.ok_or(FsError::NotFound)?;
        self.remember(&attr, &path, true);
        Ok(self.overlay(attr).await)
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let _tree = self.tree.read().await;
        let path = self.path_of(ino)?;
        self.current_attr(ino, &path).await
    }

    /// Every entry of directory `ino` (without `.` and `..`), in name order.
    pub async fn readdir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let _tree = self.tree.read().await;
        let dir = self.dir_path(ino).await?;
        let prefix = dir_prefix(&dir);
        let (start, end) = prefix_range(&prefix);
        let mut cursor = start;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        'pages: loop {
            let page = self.db.scan_info(bound_ref(&cursor), bound_ref(&end), 512);
            if page.is_empty() {
                break;
            }
            let last = page.last().map(|(k, _)| k.clone());
            for (key, info) in page {
                if is_reserved(&key) {
                    continue;
                }
                let rest = &key[prefix.len()..];
                match rest.iter().position(|b| *b == b'/') {
                    Some(i) => {
                        // A descendant: its first component is a (maybe implicit)
                        // subdirectory. Skip the rest of that subtree.
                        let name = rest[..i].to_vec();
                        let sub = child_path(&dir, &name);
                        if seen.insert(name.clone()) {
                            let attr = self.stat_path(&sub)?.ok_or(FsError::NotFound)?;
                            out.push(DirEntry { name, attr });
                        }
                        let mut after = dir_prefix(&sub);
                        match prefix_successor(&after) {
                            Some(s) => after = s,
                            None => break 'pages,
                        }
                        cursor = Bound::Included(after);
                        continue 'pages;
                    }
                    None => {
                        let name = rest.to_vec();
                        if seen.insert(name.clone()) {
                            let attr = match &info.meta {
                                Some(_) => self.stat_path(&key)?.ok_or(FsError::NotFound)?,
                                None => Attr::default_file(
                                    hashed_ino(&key),
                                    info.value_len as u64,
                                    self.owner,
                                    self.mounted_at,
                                ),
                            };
                            out.push(DirEntry { name, attr });
                        }
                    }
                }
            }
            match last {
                Some(k) => cursor = Bound::Excluded(k),
                None => break,
            }
        }
        for e in out.iter_mut() {
            e.attr = self.overlay(e.attr).await;
        }
        Ok(out)
    }

    fn alloc_ino(&self) -> (u64, BatchOp) {
        let mut next = self.next_ino.lock().unwrap_or_else(|e| e.into_inner());
        let ino = *next;
        *next += 1;
        let op = BatchOp::PutMeta {
            key: SUPER_KEY.to_vec(),
            meta: next.to_le_bytes().to_vec(),
            value: Vec::new(),
        };
        (ino, op)
    }

    async fn make(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        perm: u16,
        owner: (u32, u32),
        value: Vec<u8>,
    ) -> FsResult<Attr> {
        self.writable()?;
        let _tree = self.tree.write().await;
        let dir = self.dir_path(parent).await?;
        let path = self.child(&dir, name)?;
        if self.stat_path(&path)?.is_some() {
            return Err(FsError::Exists);
        }
        let (ino, super_op) = self.alloc_ino();
        let t = now();
        let attr = Attr {
            ino,
            kind,
            perm: perm & 0o7777,
            uid: owner.0,
            gid: owner.1,
            size: value.len() as u64,
            mtime: t,
            ctime: t,
            blocked: false,
        };
        self.db
            .write_batch(&[
                super_op,
                BatchOp::PutMeta {
                    key: path.clone(),
                    meta: attr.encode(),
                    value,
                },
            ])
            .await?;
        self.remember(&attr, &path, true);
        Ok(attr)
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        perm: u16,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        self.make(parent, name, Kind::Dir, perm, owner, Vec::new())
            .await
    }

    /// Create an empty regular file (fails if the name exists).
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u16,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        self.make(parent, name, Kind::File, perm, owner, Vec::new())
            .await
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        if target.is_empty() || target.len() > 4095 {
            return Err(FsError::Invalid("symlink target length"));
        }
        self.make(parent, name, Kind::Symlink, 0o777, owner, target.to_vec())
            .await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let _tree = self.tree.read().await;
        let path = self.path_of(ino)?;
        let attr = self.current_attr(ino, &path).await?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(self.db.get(&path).await?.ok_or(FsError::NotFound)?.to_vec())
    }

    /// Keep a now-implicit parent directory in existence after its last child goes.
    fn keep_dir(&self, dir: &[u8], ops: &mut Vec<BatchOp>) -> FsResult<()> {
        if dir.is_empty() || self.db.info(dir).is_some() {
            return Ok(());
        }
        let attr = self.stat_path(dir)?.ok_or(FsError::NotFound)?;
        ops.push(BatchOp::PutMeta {
            key: dir.to_vec(),
            meta: attr.encode(),
            value: Vec::new(),
        });
        Ok(())
    }

    /// Delete operations for the blocks of a blocked file of `size` bytes.
    fn block_deletes(&self, ino: u64, ops: &mut Vec<BatchOp>) {
        let prefix = block_prefix(ino);
        let (start, end) = prefix_range(&prefix);
        for (key, _) in self
            .db
            .scan_info(bound_ref(&start), bound_ref(&end), usize::MAX)
        {
            ops.push(BatchOp::Delete(key));
        }
    }

    /// Drop a file that no name refers to any more: its blocks now, or at last close.
    /// An open file keeps its content readable until then.
    async fn discard_file(&self, attr: &Attr, path: &[u8], ops: &mut Vec<BatchOp>) -> FsResult<()> {
        let state = self.files().get(&attr.ino).cloned();
        match state {
            Some(state) => {
                let mut st = state.lock().await;
                if st.opens > 0 {
                    self.load_content(&mut st, path).await?;
                }
                st.unlinked = true;
                st.dirty = false;
            }
            None => {
                if attr.blocked {
                    self.block_deletes(attr.ino, ops);
                }
            }
        }
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        let _tree = self.tree.write().await;
        let dir = self.dir_path(parent).await?;
        let path = self.child(&dir, name)?;
        let attr = self.stat_path(&path)?.ok_or(FsError::NotFound)?;
        if attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let mut ops = vec![BatchOp::Delete(path.clone())];
        self.discard_file(&attr, &path, &mut ops).await?;
        self.keep_dir(&dir, &mut ops)?;
        self.db.write_batch(&ops).await?;
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        let _tree = self.tree.write().await;
        let dir = self.dir_path(parent).await?;
        let path = self.child(&dir, name)?;
        let attr = self.stat_path(&path)?.ok_or(FsError::NotFound)?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if self.has_children(&path) {
            return Err(FsError::NotEmpty);
        }
        let mut ops = vec![BatchOp::Delete(path.clone())];
        self.keep_dir(&dir, &mut ops)?;
        self.db.write_batch(&ops).await?;
        Ok(())
    }

    /// Operations that move the key at `from` and every key below it to `to`,
    /// keeping inode numbers (a key without attributes gets its hashed number
    /// recorded).
    fn move_ops(&self, from: &[u8], to: &[u8], ops: &mut Vec<BatchOp>) -> FsResult<()> {
        let t = now();
        match self.stat_path(from)? {
            Some(mut attr) if self.db.info(from).is_some() => {
                attr.ctime = t;
                ops.push(BatchOp::Link {
                    key: to.to_vec(),
                    source: from.to_vec(),
                    meta: Some(attr.encode()),
                });
                ops.push(BatchOp::Delete(from.to_vec()));
            }
            Some(attr) => {
                // An implicit directory: record it explicitly so it keeps its inode.
                ops.push(BatchOp::PutMeta {
                    key: to.to_vec(),
                    meta: attr.encode(),
                    value: Vec::new(),
                });
            }
            None => return Err(FsError::NotFound),
        }
        let prefix = dir_prefix(from);
        let (start, end) = prefix_range(&prefix);
        for (key, info) in self
            .db
            .scan_info(bound_ref(&start), bound_ref(&end), usize::MAX)
        {
            let mut dest = dir_prefix(to);
            dest.extend_from_slice(&key[prefix.len()..]);
            if dest.len() > MAX_KEY_LEN {
                return Err(FsError::NameTooLong);
            }
            let meta = match info.meta {
                Some(m) => m.to_vec(),
                None => Attr::default_file(
                    hashed_ino(&key),
                    info.value_len as u64,
                    self.owner,
                    self.mounted_at,
                )
                .encode(),
            };
            ops.push(BatchOp::Link {
                key: dest,
                source: key.clone(),
                meta: Some(meta),
            });
            ops.push(BatchOp::Delete(key));
        }
        Ok(())
    }

    fn rename_nodes(&self, from: &[u8], to: &[u8]) {
        let from_prefix = dir_prefix(from);
        let mut nodes = self.nodes();
        for node in nodes.values_mut() {
            if node.path == from {
                node.path = to.to_vec();
            } else if !from.is_empty() && node.path.starts_with(&from_prefix) {
                let mut p = dir_prefix(to);
                p.extend_from_slice(&node.path[from_prefix.len()..]);
                node.path = p;
            }
        }
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.writable()?;
        if flags.noreplace && flags.exchange {
            return Err(FsError::Invalid("RENAME_NOREPLACE with RENAME_EXCHANGE"));
        }
        let _tree = self.tree.write().await;
        let src_dir = self.dir_path(parent).await?;
        let dst_dir = self.dir_path(new_parent).await?;
        let src = self.child(&src_dir, name)?;
        let dst = self.child(&dst_dir, new_name)?;
        let src_attr = self.stat_path(&src)?.ok_or(FsError::NotFound)?;
        if src == dst {
            return Ok(());
        }
        let inside = |a: &[u8], b: &[u8]| b.starts_with(&dir_prefix(a));
        if src_attr.kind == Kind::Dir && inside(&src, &dst) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        let dst_attr = self.stat_path(&dst)?;
        let mut ops = Vec::new();
        if flags.exchange {
            let dst_attr = dst_attr.ok_or(FsError::NotFound)?;
            if dst_attr.kind == Kind::Dir && inside(&dst, &src) {
                return Err(FsError::Invalid("cannot move a directory into itself"));
            }
            // Three moves in one batch: source to a reserved temporary name,
            // destination to source, temporary to destination.
            let tmp = b"\0t".to_vec();
            self.move_ops(&src, &tmp, &mut ops)?;
            let staged: Vec<Vec<u8>> = ops
                .iter()
                .filter_map(|op| match op {
                    BatchOp::Link { key, .. } | BatchOp::PutMeta { key, .. } => Some(key.clone()),
                    _ => None,
                })
                .collect();
            self.move_ops(&dst, &src, &mut ops)?;
            for key in staged {
                let mut dest = dst.clone();
                dest.extend_from_slice(&key[tmp.len()..]);
                ops.push(BatchOp::Link {
                    key: dest,
                    source: key.clone(),
                    meta: None,
                });
                ops.push(BatchOp::Delete(key));
            }
            self.db.write_batch(&ops).await?;
            // Swap the node paths through a placeholder.
            self.rename_nodes(&src, b"\0t");
            self.rename_nodes(&dst, &src);
            self.rename_nodes(b"\0t", &dst);
            return Ok(());
        }
        if let Some(d) = dst_attr {
            if flags.noreplace {
                return Err(FsError::Exists);
            }
            match (src_attr.kind == Kind::Dir, d.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if self.has_children(&dst) => return Err(FsError::NotEmpty),
                _ => {}
            }
            if d.kind != Kind::Dir {
                self.discard_file(&d, &dst, &mut ops).await?;
            }
            if self.db.info(&dst).is_some() {
                ops.push(BatchOp::Delete(dst.clone()));
            }
        }
        self.move_ops(&src, &dst, &mut ops)?;
        self.keep_dir(&src_dir, &mut ops)?;
        self.db.write_batch(&ops).await?;
        self.rename_nodes(&src, &dst);
        Ok(())
    }

    /// Refuse hard links with a clear errno.
    pub fn link(&self) -> FsResult<Attr> {
        Err(FsError::NotPermitted("hard links are not supported"))
    }

    /// The file state of `ino`, created from its stored attributes if needed.
    async fn file_state(&self, ino: u64) -> FsResult<SharedFile> {
        if let Some(s) = self.files().get(&ino).cloned() {
            return Ok(s);
        }
        let path = self.path_of(ino)?;
        let attr = self.stat_path(&path)?.ok_or(FsError::NotFound)?;
        let mut files = self.files();
        let state = files.entry(ino).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(FileState {
                attr,
                content: None,
                dirty_blocks: BTreeMap::new(),
                shrunk_from: None,
                dirty: false,
                opens: 0,
                unlinked: false,
            }))
        });
        Ok(state.clone())
    }

    /// Open a file (counts until `release`).
    pub async fn open(&self, ino: u64, truncate: bool) -> FsResult<Attr> {
        let _tree = self.tree.read().await;
        let state = self.file_state(ino).await?;
        let mut st = state.lock().await;
        match st.attr.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::Invalid("open of a symlink")),
            Kind::File => {}
        }
        st.opens += 1;
        if truncate && st.attr.size > 0 {
            self.writable()?;
            let path = self.path_of(ino)?;
            self.resize(&mut st, &path, 0).await?;
        }
        Ok(st.attr)
    }

    /// Forget the file state of `ino` if nobody has it open and nothing is dirty
    /// (a truncate of a closed file creates one).
    async fn drop_idle_state(&self, ino: u64) {
        let state = self.files().get(&ino).cloned();
        if let Some(state) = state {
            let st = state.lock().await;
            if st.opens == 0 && !st.dirty && !st.unlinked {
                self.files().remove(&ino);
            }
        }
    }

    /// The last close of one open: commit, and forget the state once nobody has it open.
    pub async fn release(&self, ino: u64) -> FsResult<()> {
        let result = self.commit(ino).await;
        let state = self.files().get(&ino).cloned();
        if let Some(state) = state {
            let mut st = state.lock().await;
            st.opens = st.opens.saturating_sub(1);
            if st.opens == 0 && !st.dirty {
                if st.unlinked && st.attr.blocked {
                    let mut ops = Vec::new();
                    self.block_deletes(ino, &mut ops);
                    if !ops.is_empty() {
                        self.db.write_batch(&ops).await?;
                    }
                }
                self.files().remove(&ino);
            }
        }
        result
    }

    async fn load_content(&self, st: &mut FileState, path: &[u8]) -> FsResult<()> {
        if st.content.is_none() && !st.attr.blocked {
            let data = if st.attr.size == 0 {
                Vec::new()
            } else {
                self.db
                    .get(path)
                    .await?
                    .map(|b| b.to_vec())
                    .unwrap_or_default()
            };
            st.content = Some(data);
        }
        Ok(())
    }

    /// Move an inline file's content into blocks.
    async fn to_blocks(&self, st: &mut FileState, path: &[u8]) -> FsResult<()> {
        if st.attr.blocked {
            return Ok(());
        }
        self.load_content(st, path).await?;
        let content = st.content.take().unwrap_or_default();
        for (n, chunk) in content.chunks(BLOCK_SIZE as usize).enumerate() {
            st.dirty_blocks.insert(n as u64, chunk.to_vec());
        }
        st.attr.blocked = true;
        st.dirty = true;
        Ok(())
    }

    async fn block(&self, st: &FileState, ino: u64, n: u64) -> FsResult<Vec<u8>> {
        if let Some(b) = st.dirty_blocks.get(&n) {
            return Ok(b.clone());
        }
        if st.shrunk_from.is_some() && n * BLOCK_SIZE >= st.attr.size {
            return Ok(Vec::new());
        }
        Ok(self
            .db
            .get(&block_key(ino, n))
            .await?
            .map(|b| b.to_vec())
            .unwrap_or_default())
    }

    async fn resize(&self, st: &mut FileState, path: &[u8], size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooLarge);
        }
        if !st.attr.blocked && size > INLINE_MAX {
            self.to_blocks(st, path).await?;
        }
        if st.attr.blocked {
            if size < st.attr.size {
                let old = st.shrunk_from.unwrap_or(st.attr.size).max(st.attr.size);
                st.shrunk_from = Some(old);
                let keep = size.div_ceil(BLOCK_SIZE);
                st.dirty_blocks.retain(|n, _| *n < keep);
                if size % BLOCK_SIZE != 0 {
                    let last = size / BLOCK_SIZE;
                    let mut b = self.block(st, st.attr.ino, last).await?;
                    b.resize((size % BLOCK_SIZE) as usize, 0);
                    st.dirty_blocks.insert(last, b);
                }
            }
        } else {
            self.load_content(st, path).await?;
            if let Some(c) = st.content.as_mut() {
                c.resize(size as usize, 0);
            }
        }
        st.attr.size = size;
        let t = now();
        st.attr.mtime = t;
        st.attr.ctime = t;
        st.dirty = true;
        Ok(())
    }

    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let _tree = self.tree.read().await;
        let state = self.file_state(ino).await?;
        let path = self.path_of(ino)?;
        let st = state.lock().await;
        if st.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let end = (offset + size as u64).min(st.attr.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        if !st.attr.blocked {
            if let Some(c) = &st.content {
                return Ok(Bytes::copy_from_slice(&c[offset as usize..end as usize]));
            }
            let data = self.db.get(&path).await?.unwrap_or_default();
            let e = (end as usize).min(data.len());
            let s = (offset as usize).min(e);
            let mut out = data.slice(s..e).to_vec();
            out.resize((end - offset) as usize, 0);
            return Ok(Bytes::from(out));
        }
        // Blocked: fetch the blocks in parallel, then assemble.
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity((last - first + 1) as usize);
        let mut n = first;
        while n <= last {
            let mut set = tokio::task::JoinSet::new();
            let mut batch = Vec::new();
            while n <= last && batch.len() < READ_PARALLELISM {
                if let Some(b) = st.dirty_blocks.get(&n) {
                    batch.push((n, Some(b.clone())));
                } else if st.shrunk_from.is_some() && n * BLOCK_SIZE >= st.attr.size {
                    batch.push((n, Some(Vec::new())));
                } else {
                    let db = self.db.clone();
                    let key = block_key(ino, n);
                    let idx = batch.len();
                    set.spawn(async move { (idx, db.get(&key).await) });
                    batch.push((n, None));
                }
                n += 1;
            }
            while let Some(r) = set.join_next().await {
                let (idx, v) = r.map_err(|_| FsError::Invalid("block read task failed"))?;
                batch[idx].1 = Some(v?.map(|b| b.to_vec()).unwrap_or_default());
            }
            blocks.extend(batch.into_iter().map(|(_, b)| b.unwrap_or_default()));
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (i, mut b) in blocks.into_iter().enumerate() {
            let bn = first + i as u64;
            b.resize(BLOCK_SIZE as usize, 0);
            let bstart = bn * BLOCK_SIZE;
            let s = offset.max(bstart) - bstart;
            let e = end.min(bstart + BLOCK_SIZE) - bstart;
            out.extend_from_slice(&b[s as usize..e as usize]);
        }
        Ok(Bytes::from(out))
    }

    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.writable()?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge)?;
        let commit_now = {
            let _tree = self.tree.read().await;
            let state = self.file_state(ino).await?;
            let path = self.path_of(ino)?;
            let mut st = state.lock().await;
            if st.attr.kind != Kind::File {
                return Err(FsError::IsDir);
            }
            if !st.attr.blocked && end > INLINE_MAX {
                self.to_blocks(&mut st, &path).await?;
            }
            if st.attr.blocked {
                let mut pos = offset;
                while pos < end {
                    let n = pos / BLOCK_SIZE;
                    let bstart = n * BLOCK_SIZE;
                    let mut b = if pos == bstart && end >= bstart + BLOCK_SIZE {
                        Vec::new()
                    } else {
                        self.block(&st, ino, n).await?
                    };
                    let s = (pos - bstart) as usize;
                    let e = ((end.min(bstart + BLOCK_SIZE)) - bstart) as usize;
                    if b.len() < e {
                        b.resize(e, 0);
                    }
                    let from = (pos - offset) as usize;
                    b[s..e].copy_from_slice(&data[from..from + (e - s)]);
                    st.dirty_blocks.insert(n, b);
                    pos = bstart + e as u64;
                }
            } else {
                self.load_content(&mut st, &path).await?;
                if let Some(c) = st.content.as_mut() {
                    if c.len() < end as usize {
                        c.resize(end as usize, 0);
                    }
                    c[offset as usize..end as usize].copy_from_slice(data);
                }
            }
            st.attr.size = st.attr.size.max(end);
            let t = now();
            st.attr.mtime = t;
            st.attr.ctime = t;
            st.dirty = true;
            st.dirty_bytes() > MAX_DIRTY_PER_FILE
        };
        if commit_now {
            self.commit(ino).await?;
        }
        Ok(data.len() as u32)
    }

    /// Turn the file's dirty state into one engine batch (not yet durable).
    pub async fn commit(&self, ino: u64) -> FsResult<()> {
        let state = self.files().get(&ino).cloned();
        let Some(state) = state else {
            return Ok(());
        };
        let _tree = self.tree.read().await;
        let mut st = state.lock().await;
        if !st.dirty || st.unlinked {
            st.dirty = false;
            return Ok(());
        }
        let path = self.path_of(ino)?;
        let mut ops = Vec::new();
        if st.attr.blocked {
            let size = st.attr.size;
            if let Some(old) = st.shrunk_from.take() {
                let keep = size.div_ceil(BLOCK_SIZE);
                let prefix = block_prefix(ino);
                let (_, end) = prefix_range(&prefix);
                let start = block_key(ino, keep);
                for (key, _) in self.db.scan_info(
                    Bound::Included(start.as_slice()),
                    bound_ref(&end),
                    usize::MAX,
                ) {
                    if block_number(ino, &key).is_some_and(|n| !st.dirty_blocks.contains_key(&n)) {
                        ops.push(BatchOp::Delete(key));
                    }
                }
                let _ = old;
            }
            for (n, b) in std::mem::take(&mut st.dirty_blocks) {
                ops.push(BatchOp::Put(block_key(ino, n), b));
            }
            ops.push(BatchOp::PutMeta {
                key: path,
                meta: st.attr.encode(),
                value: Vec::new(),
            });
        } else {
            match &st.content {
                Some(content) => ops.push(BatchOp::PutMeta {
                    key: path,
                    meta: st.attr.encode(),
                    value: content.clone(),
                }),
                // Content never loaded, so unchanged: only the attributes changed.
                None => ops.push(BatchOp::Link {
                    key: path.clone(),
                    source: path,
                    meta: Some(st.attr.encode()),
                }),
            }
        }
        self.db.write_batch(&ops).await?;
        st.dirty = false;
        Ok(())
    }

    /// Commit `ino` and make everything written so far durable.
    pub async fn fsync(&self, ino: u64) -> FsResult<()> {
        self.commit(ino).await?;
        self.db.sync().await?;
        Ok(())
    }

    /// Commit every open file and make everything durable.
    pub async fn sync_all(&self) -> FsResult<()> {
        let inos: Vec<u64> = self.files().keys().copied().collect();
        for ino in inos {
            self.commit(ino).await?;
        }
        self.db.sync().await?;
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Attr> {
        self.writable()?;
        if let Some(size) = set.size {
            let _tree = self.tree.read().await;
            let state = self.file_state(ino).await?;
            let path = self.path_of(ino)?;
            let mut st = state.lock().await;
            if st.attr.kind != Kind::File {
                return Err(FsError::IsDir);
            }
            self.resize(&mut st, &path, size).await?;
        }
        let has_state = self.files().contains_key(&ino);
        if has_state {
            {
                let state = self.file_state(ino).await?;
                let mut st = state.lock().await;
                apply_set(&mut st.attr, &set);
                st.dirty = true;
            }
            self.commit(ino).await?;
            let state = self.file_state(ino).await?;
            let attr = state.lock().await.attr;
            self.drop_idle_state(ino).await;
            return Ok(attr);
        }
        let _tree = self.tree.write().await;
        let path = self.path_of(ino)?;
        let mut attr = self.stat_path(&path)?.ok_or(FsError::NotFound)?;
        apply_set(&mut attr, &set);
        let op = if self.db.info(&path).is_some() {
            BatchOp::Link {
                key: path.clone(),
                source: path.clone(),
                meta: Some(attr.encode()),
            }
        } else {
            BatchOp::PutMeta {
                key: path.clone(),
                meta: attr.encode(),
                value: Vec::new(),
            }
        };
        self.db.write_batch(&[op]).await?;
        Ok(attr)
    }

    pub fn statfs(&self) -> FsStats {
        FsStats {
            files: self.db.len() as u64,
            live_bytes: self.db.live_bytes(),
        }
    }

    /// Commit everything, make it durable and close the engine.
    pub async fn shutdown(&self) -> FsResult<()> {
        if !self.db.is_read_only() {
            self.sync_all().await?;
        }
        self.db.close().await?;
        Ok(())
    }
}

fn apply_set(attr: &mut Attr, set: &SetAttr) {
    if let Some(p) = set.perm {
        attr.perm = p & 0o7777;
    }
    if let Some(u) = set.uid {
        attr.uid = u;
    }
    if let Some(g) = set.gid {
        attr.gid = g;
    }
    if let Some(m) = set.mtime {
        attr.mtime = m;
    }
    attr.ctime = now();
}

/// Bounds of every key starting with `prefix` (all non-reserved keys for the root).
fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    if prefix.is_empty() {
        return (Bound::Included(vec![1]), Bound::Unbounded);
    }
    let end = match prefix_successor(prefix) {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix.to_vec()), end)
}

fn bound_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}
