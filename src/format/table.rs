//! Index table parts: immutable sorted pieces of the paged index
//! (docs/design/paged-index.md; the byte layout is in docs/FORMAT.md).
//!
//! Vocabulary:
//! - **part**: one object of sorted *entries*, at most a few tens of MiB. Its id
//!   ([`PartId`]) is the writer epoch that wrote it and a number within that epoch.
//! - **entry**: a key and its [`Record`]: a tombstone, or a value whose bytes are
//!   *inline* (copied into the entry), *located* (an offset in a data object) or
//!   *empty*, with optional metadata (at most 255 bytes).
//! - **data block**: about [`DEFAULT_BLOCK_BYTES`] of entries with prefix-compressed
//!   keys, a dictionary of the data objects its located entries name, *restart
//!   points* (every [`RESTART_INTERVAL`] entries a key is stored whole, for binary
//!   search) and its own CRC32C, so one ranged read of one block verifies alone.
//!   A block never crosses a multiple of the builder's chunk size (64 KiB, the
//!   envelope's chunk) unless one entry alone is that large: the builder pads with
//!   zero bytes to the boundary instead, so a block is one chunk to decrypt.
//! - **meta**: everything after the data blocks: the bloom filter ([`super::bloom`]),
//!   the *block index* (per block its *separator*, a key `s` with
//!   `last key of the block ≤ s < first key of the next`, then its offset and
//!   length), the *props* and the footer. Its length is known from the manifest, so
//!   one ranged read of the object's tail loads it, checked by its own CRC32C.
//!
//! ```text
//! header (32): magic "KVFSIDX1" | version u16 = 1 | flags u16 = 0 | reserved u32
//!              | epoch u64 | seq u64
//! data blocks, each at the offset its index entry gives (zero padding between)
//! filter | block index | props
//! footer (40): filter_off u32 | filter_len u32 | index_off u32 | index_len u32
//!              | props_off u32 | props_len u32 | block_count u32 | entry_count u64
//!              | meta_crc u32 (CRC32C of filter_off .. this field)
//! trailer (12): crc32c u32 (of all preceding bytes) | magic "KVFSIDXE"
//! ```

use bytes::Bytes;

use super::bloom::{Bloom, BloomBuilder};
use super::codec::{check_trailer, read_header, write_header, write_trailer, PutLe, Reader};
use super::names::ObjectId;
use super::segment::MAX_META_LEN;
use super::{FormatError, FormatResult};

pub const MAGIC: &[u8; 8] = b"KVFSIDX1";
pub const END_MAGIC: &[u8; 8] = b"KVFSIDXE";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
pub const FOOTER_LEN: usize = 40;
/// Footer and trailer: the least a part's meta can be.
pub const MIN_META_LEN: usize = FOOTER_LEN + 12;
/// Target size of a data block.
pub const DEFAULT_BLOCK_BYTES: usize = 16 << 10;
/// Blocks do not cross multiples of this (the envelope's chunk size).
pub const DEFAULT_CHUNK_BYTES: usize = super::envelope::CHUNK_BYTES as usize;
/// Bits per key of the bloom filter by default (about 1 % false positives).
pub const DEFAULT_BITS_PER_KEY: u8 = 10;
/// Every this many entries a block stores a key whole (a restart point).
pub const RESTART_INTERVAL: usize = 16;
/// The most data objects one block's dictionary names.
pub const MAX_BLOCK_OBJECTS: usize = 255;
/// A block's tail: restart_count u16 | objects_off u32 | crc32c u32.
const BLOCK_TAIL_LEN: usize = 10;
/// The least a block can be: one entry of an empty key, an empty dictionary, one
/// restart point and the tail.
const MIN_BLOCK_LEN: usize = 4 + 1 + 4 + BLOCK_TAIL_LEN;
const WHAT: &str = "index table part";
const BLOCK: &str = "index table block";

const KIND_VALUE: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const KIND_MASK: u8 = 0b11;
const HAS_LOC: u8 = 1 << 2;
const INLINE: u8 = 1 << 3;
const HAS_META: u8 = 1 << 4;
const PRIMARY: u8 = 1 << 5;
const KNOWN_FLAGS: u8 = KIND_MASK | HAS_LOC | INLINE | HAS_META | PRIMARY;

/// Names one part: the writer epoch that wrote it and its number in that epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartId {
    pub epoch: u64,
    pub seq: u64,
}

/// Which tree a part belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// Keys to their records.
    Main,
    /// (object, offset, key) of every key linking to a separated value; no values.
    Refs,
}

/// Where a value's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// No bytes (value length 0): directory entries and the like.
    Empty,
    /// The bytes themselves.
    Inline(&'a [u8]),
    /// In a data object, at the offset of the stored value (its checksum), as in an
    /// index location today.
    Located { object: ObjectId, offset: u32 },
}

/// What an entry says of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// The key was deleted: it hides older entries of the key in lower parts.
    Tombstone,
    Value {
        /// The value's length in bytes.
        value_len: u32,
        body: Body<'a>,
        /// The key's metadata (at most 255 bytes; empty for none).
        meta: &'a [u8],
        /// The key's own put entry is at the location (not a link to another key's
        /// value). Only with a located body.
        primary: bool,
    },
}

/// One decoded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: Vec<u8>,
    pub record: Record<'a>,
}

/// How a builder cuts blocks and what the part says of itself.
#[derive(Clone, Debug)]
pub struct TableOptions {
    pub tree: Tree,
    /// The level the part is written for (informational).
    pub level: u8,
    pub block_bytes: usize,
    /// Blocks do not cross multiples of this; 0 for no alignment.
    pub chunk_bytes: usize,
    /// Bloom filter bits per key; 0 for no filter (the refs tree).
    pub bits_per_key: u8,
    /// The first and last log segment whose entries the part holds, when it was
    /// flushed from the log (default ids otherwise).
    pub log_first: ObjectId,
    pub log_last: ObjectId,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            tree: Tree::Main,
            level: 0,
            block_bytes: DEFAULT_BLOCK_BYTES,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            bits_per_key: DEFAULT_BITS_PER_KEY,
            log_first: ObjectId::default(),
            log_last: ObjectId::default(),
        }
    }
}

/// What a part says of itself (the props section), for fsck and stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props {
    pub tree: Option<Tree>,
    pub level: u8,
    pub first_key: Vec<u8>,
    pub last_key: Vec<u8>,
    pub tombstones: u64,
    /// Bytes of inline values.
    pub inline_bytes: u64,
    /// Bytes of located values (their `value_len`).
    pub located_bytes: u64,
    pub log_first: ObjectId,
    pub log_last: ObjectId,
}

/// A built part and what a manifest records of it.
#[derive(Clone, Debug)]
pub struct BuiltPart {
    pub bytes: Bytes,
    /// Bytes of the object's tail that [`PartMeta::decode`] needs.
    pub meta_len: u32,
    pub entry_count: u64,
    pub first_key: Vec<u8>,
    pub last_key: Vec<u8>,
}

fn bad(what: &'static str, reason: impl Into<String>) -> FormatError {
    FormatError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// The shortest key `s` with `a ≤ s < b`, for `a < b`.
pub fn separator(a: &[u8], b: &[u8]) -> Vec<u8> {
    let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if p == a.len() {
        return a.to_vec();
    }
    // a[p] < b[p] because a < b and a is not a prefix of b.
    if a[p] + 1 < b[p] || (a[p] + 1 == b[p] && b.len() > p + 1) {
        let mut s = a[..p].to_vec();
        s.push(a[p] + 1);
        return s;
    }
    // s continues a past p: the first byte after p that can grow gives a shorter key.
    for q in p + 1..a.len().saturating_sub(1) {
        if a[q] < 0xff {
            let mut s = a[..q].to_vec();
            s.push(a[q] + 1);
            return s;
        }
    }
    a.to_vec()
}

/// The entries of the data block being built.
#[derive(Debug, Default)]
struct BlockBuilder {
    entries: Vec<u8>,
    objects: Vec<ObjectId>,
    restarts: Vec<u32>,
    count: usize,
    last_key: Vec<u8>,
}

/// Where a block builder was, to undo one entry.
struct Mark {
    entries: usize,
    objects: usize,
    restarts: usize,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    fn finished_len(&self) -> usize {
        self.entries.len() + 1 + 16 * self.objects.len() + 4 * self.restarts.len() + BLOCK_TAIL_LEN
    }

    fn mark(&self) -> Mark {
        Mark {
            entries: self.entries.len(),
            objects: self.objects.len(),
            restarts: self.restarts.len(),
            last_key: self.last_key.clone(),
        }
    }

    fn undo(&mut self, m: Mark) {
        self.entries.truncate(m.entries);
        self.objects.truncate(m.objects);
        self.restarts.truncate(m.restarts);
        self.last_key = m.last_key;
        self.count -= 1;
    }

    fn push(&mut self, key: &[u8], record: &Record<'_>) {
        let shared = if self.count % RESTART_INTERVAL == 0 {
            self.restarts.push(self.entries.len() as u32);
            0
        } else {
            key.iter()
                .zip(&self.last_key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let out = &mut self.entries;
        out.put_varint(shared as u64);
        out.put_varint((key.len() - shared) as u64);
        out.extend_from_slice(&key[shared..]);
        match record {
            Record::Tombstone => {
                out.put_u8(KIND_TOMBSTONE);
                out.put_varint(0);
            }
            Record::Value {
                value_len,
                body,
                meta,
                primary,
            } => {
                let mut flags = KIND_VALUE;
                match body {
                    Body::Empty => {}
                    Body::Inline(_) => flags |= INLINE,
                    Body::Located { .. } => flags |= HAS_LOC,
                }
                if !meta.is_empty() {
                    flags |= HAS_META;
                }
                if *primary {
                    flags |= PRIMARY;
                }
                out.put_u8(flags);
                out.put_varint(*value_len as u64);
                match body {
                    Body::Empty => {}
                    Body::Inline(v) => out.extend_from_slice(v),
                    Body::Located { object, offset } => {
                        let slot = match self.objects.iter().position(|o| o == object) {
                            Some(i) => i,
                            None => {
                                self.objects.push(*object);
                                self.objects.len() - 1
                            }
                        };
                        out.put_u8(slot as u8);
                        out.put_u32(*offset);
                    }
                }
                if !meta.is_empty() {
                    out.put_u8(meta.len() as u8);
                    out.extend_from_slice(meta);
                }
            }
        }
        self.count += 1;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
    }

    /// Append the finished block to `out` and reset.
    fn finish_into(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.entries);
        let objects_off = self.entries.len() as u32;
        out.put_u8(self.objects.len() as u8);
        for o in &self.objects {
            out.put_u64(o.epoch);
            out.put_u64(o.seq);
        }
        for r in &self.restarts {
            out.put_u32(*r);
        }
        out.put_u16(self.restarts.len() as u16);
        out.put_u32(objects_off);
        let crc = crc32c::crc32c(&out[start..]);
        out.put_u32(crc);
        self.entries.clear();
        self.objects.clear();
        self.restarts.clear();
        self.count = 0;
    }
}

/// Builds one part in memory. Keys must be added in strictly increasing order.
#[derive(Debug)]
pub struct TableBuilder {
    opts: TableOptions,
    buf: Vec<u8>,
    block: BlockBuilder,
    block_start: usize,
    /// (separator, offset, len) of every finished block but the last.
    index: Vec<(Vec<u8>, u32, u32)>,
    /// The last finished block: its last key, offset and length; its separator
    /// waits for the next block's first key.
    pending: Option<(Vec<u8>, u32, u32)>,
    bloom: Option<BloomBuilder>,
    props: Props,
    entries: u64,
}

impl TableBuilder {
    pub fn new(id: PartId, opts: TableOptions) -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        write_header(&mut buf, MAGIC, VERSION, 0);
        buf.put_u64(id.epoch);
        buf.put_u64(id.seq);
        let bloom = (opts.bits_per_key > 0).then(|| BloomBuilder::new(opts.bits_per_key));
        let props = Props {
            tree: Some(opts.tree),
            level: opts.level,
            log_first: opts.log_first,
            log_last: opts.log_last,
            ..Props::default()
        };
        TableBuilder {
            block_start: buf.len(),
            buf,
            opts,
            block: BlockBuilder::default(),
            index: Vec::new(),
            pending: None,
            bloom,
            props,
            entries: 0,
        }
    }

    /// Bytes so far (data blocks written and the block being built).
    pub fn len(&self) -> usize {
        match self.block.count {
            0 => self.buf.len(),
            _ => self.buf.len() + self.block.finished_len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn entry_count(&self) -> u64 {
        self.entries
    }

    fn crosses(&self, start: usize, len: usize) -> bool {
        let c = self.opts.chunk_bytes;
        c > 0 && len > 0 && start / c != (start + len - 1) / c
    }

    /// Add an entry. Errors (and adds nothing) when the key does not sort after the
    /// last one, is longer than 65,535 bytes, or the record is inconsistent.
    pub fn add(&mut self, key: &[u8], record: &Record<'_>) -> FormatResult<()> {
        if self.entries > 0 && key <= self.props.last_key.as_slice() {
            return Err(bad(WHAT, "keys must be added in increasing order"));
        }
        if key.len() > u16::MAX as usize {
            return Err(bad(WHAT, format!("key of {} bytes", key.len())));
        }
        if let Record::Value {
            value_len,
            body,
            meta,
            primary,
        } = record
        {
            let consistent = match body {
                Body::Empty => *value_len == 0 && !primary,
                Body::Inline(v) => v.len() == *value_len as usize && !primary,
                Body::Located { .. } => true,
            };
            if !consistent || meta.len() > MAX_META_LEN {
                return Err(bad(WHAT, "inconsistent record"));
            }
        }
        if self.block.count > 0 {
            let mark = self.block.mark();
            self.block.push(key, record);
            let len = self.block.finished_len();
            if len > self.opts.block_bytes
                || self.crosses(self.block_start, len)
                || self.block.objects.len() > MAX_BLOCK_OBJECTS
            {
                self.block.undo(mark);
                self.finish_block();
            }
        }
        if self.block.count == 0 {
            self.start_block(key, record);
        }
        self.entries += 1;
        if let Some(b) = &mut self.bloom {
            b.add_key(key);
        }
        if self.entries == 1 {
            self.props.first_key = key.to_vec();
        }
        self.props.last_key.clear();
        self.props.last_key.extend_from_slice(key);
        match record {
            Record::Tombstone => self.props.tombstones += 1,
            Record::Value {
                value_len, body, ..
            } => match body {
                Body::Empty => {}
                Body::Inline(_) => self.props.inline_bytes += *value_len as u64,
                Body::Located { .. } => self.props.located_bytes += *value_len as u64,
            },
        }
        Ok(())
    }

    /// Put `key` first in a new block, after padding to the next chunk boundary
    /// when the block would cross it and fits in a chunk.
    fn start_block(&mut self, key: &[u8], record: &Record<'_>) {
        if let Some((last, offset, len)) = self.pending.take() {
            self.index.push((separator(&last, key), offset, len));
        }
        self.block.push(key, record);
        let len = self.block.finished_len();
        let c = self.opts.chunk_bytes;
        if self.crosses(self.buf.len(), len) && len <= c {
            let to = self.buf.len().next_multiple_of(c);
            self.buf.resize(to, 0);
        }
        self.block_start = self.buf.len();
    }

    fn finish_block(&mut self) {
        let offset = self.buf.len();
        let last = self.block.last_key.clone();
        self.block.finish_into(&mut self.buf);
        let len = self.buf.len() - offset;
        self.pending = Some((last, offset as u32, len as u32));
        self.block_start = self.buf.len();
    }

    /// Append meta, footer and trailer; returns the object and what a manifest
    /// records of it. The caller keeps parts under 4 GiB.
    pub fn finish(mut self) -> BuiltPart {
        if self.block.count > 0 {
            self.finish_block();
        }
        if let Some((last, offset, len)) = self.pending.take() {
            self.index.push((last, offset, len));
        }
        let filter_off = self.buf.len();
        if let Some(b) = &self.bloom {
            b.write(&mut self.buf);
        }
        let index_off = self.buf.len();
        for (sep, offset, len) in &self.index {
            self.buf.put_u16(sep.len() as u16);
            self.buf.extend_from_slice(sep);
            self.buf.put_u32(*offset);
            self.buf.put_u32(*len);
        }
        let props_off = self.buf.len();
        write_props(&mut self.buf, &self.props);
        let footer_off = self.buf.len();
        self.buf.put_u32(filter_off as u32);
        self.buf.put_u32((index_off - filter_off) as u32);
        self.buf.put_u32(index_off as u32);
        self.buf.put_u32((props_off - index_off) as u32);
        self.buf.put_u32(props_off as u32);
        self.buf.put_u32((footer_off - props_off) as u32);
        self.buf.put_u32(self.index.len() as u32);
        self.buf.put_u64(self.entries);
        let meta_crc = crc32c::crc32c(&self.buf[filter_off..]);
        self.buf.put_u32(meta_crc);
        write_trailer(&mut self.buf, END_MAGIC);
        BuiltPart {
            meta_len: (self.buf.len() - filter_off) as u32,
            bytes: Bytes::from(self.buf),
            entry_count: self.entries,
            first_key: self.props.first_key,
            last_key: self.props.last_key,
        }
    }
}

fn write_props(out: &mut Vec<u8>, p: &Props) {
    out.put_u8(match p.tree {
        Some(Tree::Refs) => 1,
        _ => 0,
    });
    out.put_u8(p.level);
    out.put_u16(p.first_key.len() as u16);
    out.extend_from_slice(&p.first_key);
    out.put_u16(p.last_key.len() as u16);
    out.extend_from_slice(&p.last_key);
    out.put_u64(p.tombstones);
    out.put_u64(p.inline_bytes);
    out.put_u64(p.located_bytes);
    for id in [p.log_first, p.log_last] {
        out.put_u64(id.epoch);
        out.put_u64(id.seq);
    }
}

fn read_props(section: &[u8]) -> FormatResult<Props> {
    let mut r = Reader::new(section, WHAT);
    let tree = match r.u8()? {
        0 => Tree::Main,
        1 => Tree::Refs,
        t => return Err(r.invalid(format!("unknown tree {t}"))),
    };
    let level = r.u8()?;
    let n = r.u16()? as usize;
    let first_key = r.bytes(n)?.to_vec();
    let n = r.u16()? as usize;
    let last_key = r.bytes(n)?.to_vec();
    let tombstones = r.u64()?;
    let inline_bytes = r.u64()?;
    let located_bytes = r.u64()?;
    let mut ids = [ObjectId::default(); 2];
    for id in &mut ids {
        *id = ObjectId {
            epoch: r.u64()?,
            seq: r.u64()?,
        };
    }
    if r.remaining() != 0 {
        return Err(r.invalid("bytes after the props"));
    }
    Ok(Props {
        tree: Some(tree),
        level,
        first_key,
        last_key,
        tombstones,
        inline_bytes,
        located_bytes,
        log_first: ids[0],
        log_last: ids[1],
    })
}

/// Where one data block is in its part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHandle {
    /// The block's number in the part.
    pub index: usize,
    pub offset: u32,
    pub len: u32,
}

/// A part's meta, decoded from the object's tail: what a reader keeps in memory to
/// find the one block that may hold a key.
#[derive(Clone, Debug)]
pub struct PartMeta {
    pub id: PartId,
    pub entry_count: u64,
    pub props: Props,
    /// Where the meta starts (the end of the data blocks).
    pub meta_offset: u32,
    filter: Option<Bloom>,
    /// Every block's separator, back to back.
    separators: Vec<u8>,
    /// Per block: end of its separator in `separators`, offset, length.
    blocks: Vec<(u32, u32, u32)>,
}

impl PartMeta {
    /// Decode the meta of part `id`, an object of `object_len` bytes, from `tail`: a
    /// suffix of the object at least `meta_len` bytes long (the whole object will
    /// do). Checks the footer, the meta checksum and every section; the data blocks
    /// are checked when read ([`Block::decode`]).
    pub fn decode(id: PartId, object_len: u64, tail: &[u8]) -> FormatResult<PartMeta> {
        if tail.len() < MIN_META_LEN {
            return Err(FormatError::Truncated {
                what: WHAT,
                offset: tail.len(),
                needed: MIN_META_LEN - tail.len(),
            });
        }
        if (tail.len() as u64) > object_len || object_len > u32::MAX as u64 {
            return Err(bad(WHAT, "the tail does not fit the object"));
        }
        if &tail[tail.len() - 8..] != END_MAGIC {
            return Err(bad(
                WHAT,
                "missing end marker (truncated or not a kvfs object)",
            ));
        }
        let base = object_len as usize - tail.len();
        let footer_at = tail.len() - MIN_META_LEN;
        let mut f = Reader::at(tail, footer_at, WHAT);
        let mut field = || f.u32().map(|v| v as usize);
        let (filter_off, filter_len) = (field()?, field()?);
        let (index_off, index_len) = (field()?, field()?);
        let (props_off, props_len) = (field()?, field()?);
        let block_count = field()?;
        let entry_count = f.u64()?;
        let meta_crc = f.u32()?;
        let footer_off = base + footer_at;
        let laid_out = filter_off >= HEADER_LEN
            && filter_off >= base
            && filter_off.checked_add(filter_len) == Some(index_off)
            && index_off.checked_add(index_len) == Some(props_off)
            && props_off.checked_add(props_len) == Some(footer_off);
        if !laid_out {
            return Err(bad(WHAT, "footer sections out of place"));
        }
        let meta = &tail[filter_off - base..footer_at + FOOTER_LEN - 4];
        let computed = crc32c::crc32c(meta);
        if computed != meta_crc {
            return Err(FormatError::Checksum {
                what: WHAT,
                stored: meta_crc,
                computed,
            });
        }
        let section = |off: usize, len: usize| &tail[off - base..off - base + len];
        let filter = if filter_len == 0 {
            None
        } else {
            Some(Bloom::decode(section(filter_off, filter_len))?)
        };
        let props = read_props(section(props_off, props_len))?;
        // Every block takes at least 10 bytes of index: bound the count first.
        let index = section(index_off, index_len);
        if block_count > index.len() / 10 {
            return Err(bad(
                WHAT,
                format!("block count {block_count} exceeds the index"),
            ));
        }
        let mut separators = Vec::with_capacity(index.len());
        let mut blocks = Vec::with_capacity(block_count);
        let mut r = Reader::new(index, WHAT);
        let mut data_end = HEADER_LEN;
        let mut prev_sep: Option<&[u8]> = None;
        for i in 0..block_count {
            let n = r.u16()? as usize;
            let sep = r.bytes(n)?;
            let offset = r.u32()? as usize;
            let len = r.u32()? as usize;
            if offset < data_end || len < MIN_BLOCK_LEN || offset + len > filter_off {
                return Err(bad(WHAT, format!("block {i} out of place")));
            }
            if prev_sep.is_some_and(|p| p >= sep) {
                return Err(bad(WHAT, format!("separators out of order at block {i}")));
            }
            prev_sep = Some(sep);
            data_end = offset + len;
            separators.extend_from_slice(sep);
            blocks.push((separators.len() as u32, offset as u32, len as u32));
        }
        if r.remaining() != 0 {
            return Err(bad(WHAT, "bytes after the block index"));
        }
        if (block_count == 0) != (entry_count == 0) || entry_count < block_count as u64 {
            return Err(bad(WHAT, "block and entry counts disagree"));
        }
        if block_count == 0 && filter_off != HEADER_LEN {
            return Err(bad(WHAT, "data without blocks"));
        }
        Ok(PartMeta {
            id,
            entry_count,
            props,
            meta_offset: filter_off as u32,
            filter,
            separators,
            blocks,
        })
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    fn separator(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.blocks[i - 1].0 };
        &self.separators[start as usize..self.blocks[i].0 as usize]
    }

    /// Block `i` (in key order).
    pub fn block(&self, i: usize) -> Option<BlockHandle> {
        self.blocks.get(i).map(|&(_, offset, len)| BlockHandle {
            index: i,
            offset,
            len,
        })
    }

    /// The first block that may hold keys at or after `key` (None past the end).
    pub fn seek_block(&self, key: &[u8]) -> Option<BlockHandle> {
        let (mut lo, mut hi) = (0, self.blocks.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.separator(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.block(lo)
    }

    /// The one block that may hold `key`: None when the filter or the key range
    /// rules it out.
    pub fn find_block(&self, key: &[u8]) -> Option<BlockHandle> {
        if !self.may_contain(key) {
            return None;
        }
        self.seek_block(key)
    }

    /// The bloom filter's answer (true when the part has no filter).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.filter.as_ref().is_none_or(|f| f.may_contain(key))
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.filter.as_ref().map_or(0, Bloom::memory_bytes)
            + self.separators.capacity()
            + self.blocks.capacity() * 12
            + self.props.first_key.capacity()
            + self.props.last_key.capacity()
    }
}

/// One verified data block.
#[derive(Debug)]
pub struct Block<'a> {
    entries: &'a [u8],
    objects: Vec<ObjectId>,
    restarts: Vec<u32>,
}

impl<'a> Block<'a> {
    /// Verify a block's checksum and parse its dictionary and restart points.
    pub fn decode(block: &'a [u8]) -> FormatResult<Block<'a>> {
        if block.len() < MIN_BLOCK_LEN {
            return Err(bad(BLOCK, format!("{} bytes is too short", block.len())));
        }
        let (body, crc) = block.split_at(block.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(FormatError::Checksum {
                what: BLOCK,
                stored,
                computed,
            });
        }
        let mut t = Reader::at(body, body.len() - 6, BLOCK);
        let restart_count = t.u16()? as usize;
        let objects_off = t.u32()? as usize;
        if objects_off == 0 || objects_off >= body.len() - 6 {
            return Err(bad(BLOCK, "dictionary out of place"));
        }
        let mut r = Reader::at(body, objects_off, BLOCK);
        let object_count = r.u8()? as usize;
        let mut objects = Vec::with_capacity(object_count);
        for _ in 0..object_count {
            objects.push(ObjectId {
                epoch: r.u64()?,
                seq: r.u64()?,
            });
        }
        if restart_count == 0 || r.remaining() != restart_count * 4 + 6 {
            return Err(bad(BLOCK, "restart points do not fill the tail"));
        }
        let mut restarts = Vec::with_capacity(restart_count);
        for _ in 0..restart_count {
            let at = r.u32()?;
            if restarts.last().map_or(at != 0, |&p| at <= p) || at as usize >= objects_off {
                return Err(bad(BLOCK, "restart points out of order"));
            }
            restarts.push(at);
        }
        Ok(Block {
            entries: &body[..objects_off],
            objects,
            restarts,
        })
    }

    /// Decode the entry at `pos` given the previous key; returns it and where the
    /// next one starts.
    fn entry_at(&self, pos: usize, prev: &[u8]) -> FormatResult<(Entry<'a>, usize)> {
        let mut r = Reader::at(self.entries, pos, BLOCK);
        let shared = r.varint()?;
        let unshared = r.varint()?;
        if shared > prev.len() as u64 || unshared > r.remaining() as u64 {
            return Err(r.invalid("key lengths out of range"));
        }
        let mut key = Vec::with_capacity(shared as usize + unshared as usize);
        key.extend_from_slice(&prev[..shared as usize]);
        key.extend_from_slice(r.bytes(unshared as usize)?);
        if key.len() > u16::MAX as usize {
            return Err(r.invalid("key longer than 65,535 bytes"));
        }
        let flags = r.u8()?;
        let value_len = r.varint()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(r.invalid(format!("unknown entry flags {flags:#04x}")));
        }
        let value_len = u32::try_from(value_len).map_err(|_| r.invalid("value too long"))?;
        let record = match flags & KIND_MASK {
            KIND_TOMBSTONE if flags == KIND_TOMBSTONE && value_len == 0 => Record::Tombstone,
            KIND_VALUE => {
                let body = match (flags & HAS_LOC != 0, flags & INLINE != 0) {
                    (false, false) if value_len == 0 => Body::Empty,
                    (false, true) => Body::Inline(r.bytes(value_len as usize)?),
                    (true, false) => {
                        let slot = r.u8()? as usize;
                        let offset = r.u32()?;
                        let object = *self
                            .objects
                            .get(slot)
                            .ok_or_else(|| r.invalid("object not in the dictionary"))?;
                        Body::Located { object, offset }
                    }
                    _ => return Err(r.invalid("inconsistent entry flags")),
                };
                let primary = flags & PRIMARY != 0;
                if primary && !matches!(body, Body::Located { .. }) {
                    return Err(r.invalid("a primary entry without a location"));
                }
                let meta = if flags & HAS_META != 0 {
                    let n = r.u8()? as usize;
                    if n == 0 {
                        return Err(r.invalid("empty metadata flagged"));
                    }
                    r.bytes(n)?
                } else {
                    &[]
                };
                Record::Value {
                    value_len,
                    body,
                    meta,
                    primary,
                }
            }
            _ => return Err(r.invalid(format!("bad entry kind in flags {flags:#04x}"))),
        };
        Ok((Entry { key, record }, r.pos()))
    }

    /// Every entry in key order, checked: keys strictly increasing, restart points
    /// where they belong, nothing left over.
    pub fn entries(&self) -> FormatResult<Vec<Entry<'a>>> {
        let mut out: Vec<Entry<'a>> = Vec::new();
        let mut pos = 0;
        let mut prev: Vec<u8> = Vec::new();
        while pos < self.entries.len() {
            let n = out.len();
            let restart = n % RESTART_INTERVAL == 0;
            if restart && self.restarts.get(n / RESTART_INTERVAL) != Some(&(pos as u32)) {
                return Err(bad(BLOCK, format!("restart point missing at entry {n}")));
            }
            let (e, next) = self.entry_at(pos, if restart { &[] } else { &prev })?;
            if n > 0 && e.key <= prev {
                return Err(bad(BLOCK, format!("keys out of order at entry {n}")));
            }
            prev.clone_from(&e.key);
            out.push(e);
            pos = next;
        }
        if out.len().div_ceil(RESTART_INTERVAL) != self.restarts.len() {
            return Err(bad(BLOCK, "restart points past the last entry"));
        }
        Ok(out)
    }

    /// The entry of `key`, if the block holds one: a binary search over the restart
    /// points, then a scan of at most [`RESTART_INTERVAL`] entries.
    pub fn get(&self, key: &[u8]) -> FormatResult<Option<Entry<'a>>> {
        // The last restart point whose key is at most `key`.
        let (mut lo, mut hi) = (0, self.restarts.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (e, _) = self.entry_at(self.restarts[mid] as usize, &[])?;
            if e.key.as_slice() <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let i = lo;
        if i == 0 {
            return Ok(None);
        }
        let mut pos = self.restarts[i - 1] as usize;
        let end = self
            .restarts
            .get(i)
            .map_or(self.entries.len(), |&r| r as usize);
        let mut prev: Vec<u8> = Vec::new();
        while pos < end {
            let (e, next) = self.entry_at(pos, &prev)?;
            if e.key.as_slice() == key {
                return Ok(Some(e));
            }
            if e.key.as_slice() > key || next <= pos {
                break;
            }
            prev = e.key;
            pos = next;
        }
        Ok(None)
    }
}

/// A whole part, verified end to end: what compaction and fsck read.
#[derive(Debug)]
pub struct TableView<'a> {
    pub meta: PartMeta,
    buf: &'a [u8],
}

impl<'a> TableView<'a> {
    /// Verify the whole-object checksum, the header (which must name `id`) and the
    /// meta. Blocks are checked by [`TableView::entries`].
    pub fn decode(id: PartId, buf: &'a [u8]) -> FormatResult<TableView<'a>> {
        let body = check_trailer(buf, END_MAGIC, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        let flags = read_header(&mut r, MAGIC, VERSION)?;
        if flags != 0 {
            return Err(r.invalid(format!("unknown flags {flags:#06x}")));
        }
        let stored = PartId {
            epoch: r.u64()?,
            seq: r.u64()?,
        };
        if stored != id {
            return Err(r.invalid(format!(
                "holds part {}.{}, not {}.{}",
                stored.epoch, stored.seq, id.epoch, id.seq
            )));
        }
        let meta = PartMeta::decode(id, buf.len() as u64, buf)?;
        Ok(TableView { meta, buf })
    }

    /// Block `h`'s bytes.
    pub fn block_bytes(&self, h: BlockHandle) -> &'a [u8] {
        &self.buf[h.offset as usize..(h.offset + h.len) as usize]
    }

    /// Every entry in key order, each block verified; also checks the padding, the
    /// separators, the filter, the counts and the props against the entries.
    pub fn entries(&self) -> FormatResult<Vec<Entry<'a>>> {
        let m = &self.meta;
        let mut out: Vec<Entry<'a>> = Vec::with_capacity(m.entry_count.min(1 << 20) as usize);
        let mut data_end = HEADER_LEN;
        let mut props = Props {
            tree: m.props.tree,
            level: m.props.level,
            log_first: m.props.log_first,
            log_last: m.props.log_last,
            ..Props::default()
        };
        for i in 0..m.block_count() {
            let Some(h) = m.block(i) else { break };
            if self.buf[data_end..h.offset as usize]
                .iter()
                .any(|&b| b != 0)
            {
                return Err(bad(WHAT, format!("bytes before block {i} are not padding")));
            }
            data_end = (h.offset + h.len) as usize;
            let entries = Block::decode(self.block_bytes(h))?.entries()?;
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return Err(bad(WHAT, format!("block {i} is empty")));
            };
            if out.last().is_some_and(|p| p.key >= first.key)
                || (i > 0 && first.key.as_slice() <= m.separator(i - 1))
                || last.key.as_slice() > m.separator(i)
            {
                return Err(bad(WHAT, format!("block {i} out of key order")));
            }
            for e in &entries {
                if !m.may_contain(&e.key) {
                    return Err(bad(WHAT, "the filter misses a key"));
                }
                match e.record {
                    Record::Tombstone => props.tombstones += 1,
                    Record::Value {
                        value_len, body, ..
                    } => match body {
                        Body::Empty => {}
                        Body::Inline(_) => props.inline_bytes += value_len as u64,
                        Body::Located { .. } => props.located_bytes += value_len as u64,
                    },
                }
            }
            out.extend(entries);
        }
        if self.buf[data_end..m.meta_offset as usize]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(bad(WHAT, "bytes after the last block are not padding"));
        }
        if let (Some(first), Some(last)) = (out.first(), out.last()) {
            props.first_key.clone_from(&first.key);
            props.last_key.clone_from(&last.key);
        }
        if out.len() as u64 != m.entry_count || props != m.props {
            return Err(bad(WHAT, "counts or props disagree with the entries"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const ID: PartId = PartId { epoch: 4, seq: 9 };

    /// An owned record, for models.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Owned {
        Tombstone,
        Empty(Vec<u8>),
        Inline(Vec<u8>, Vec<u8>),
        Located(u32, u8, u32, Vec<u8>, bool),
    }

    impl Owned {
        fn record(&self) -> Record<'_> {
            match self {
                Owned::Tombstone => Record::Tombstone,
                Owned::Empty(meta) => Record::Value {
                    value_len: 0,
                    body: Body::Empty,
                    meta,
                    primary: false,
                },
                Owned::Inline(v, meta) => Record::Value {
                    value_len: v.len() as u32,
                    body: Body::Inline(v),
                    meta,
                    primary: false,
                },
                Owned::Located(len, obj, offset, meta, primary) => Record::Value {
                    value_len: *len,
                    body: Body::Located {
                        object: ObjectId {
                            epoch: 1,
                            seq: *obj as u64,
                        },
                        offset: *offset,
                    },
                    meta,
                    primary: *primary,
                },
            }
        }
    }

    fn sample_model(n: u32) -> BTreeMap<Vec<u8>, Owned> {
        (0..n)
            .map(|i| {
                let key = format!("\0d{:08}/name-{i:05}", i / 40).into_bytes();
                let rec = match i % 4 {
                    0 => Owned::Tombstone,
                    1 => Owned::Empty(if i % 8 == 1 {
                        b"attrs".to_vec()
                    } else {
                        vec![]
                    }),
                    2 => Owned::Inline(vec![i as u8; (i % 50) as usize], vec![7; 65]),
                    _ => Owned::Located(1000 + i, (i % 300) as u8, i * 97, vec![], i % 3 == 0),
                };
                (key, rec)
            })
            .collect()
    }

    fn build(model: &BTreeMap<Vec<u8>, Owned>, opts: TableOptions) -> BuiltPart {
        let mut b = TableBuilder::new(ID, opts);
        for (k, r) in model {
            b.add(k, &r.record()).unwrap();
        }
        b.finish()
    }

    fn small_blocks() -> TableOptions {
        TableOptions {
            block_bytes: 700,
            chunk_bytes: 2048,
            ..TableOptions::default()
        }
    }

    /// Look `key` up as a reader does: meta from the tail, then one block.
    fn lookup<'a>(part: &'a BuiltPart, meta: &PartMeta, key: &[u8]) -> Option<Entry<'a>> {
        let h = meta.find_block(key)?;
        let block = &part.bytes[h.offset as usize..(h.offset + h.len) as usize];
        Block::decode(block).unwrap().get(key).unwrap()
    }

    fn check_against(model: &BTreeMap<Vec<u8>, Owned>, part: &BuiltPart) {
        let view = TableView::decode(ID, &part.bytes).unwrap();
        let entries = view.entries().unwrap();
        assert_eq!(entries.len(), model.len());
        for (e, (k, r)) in entries.iter().zip(model) {
            assert_eq!(&e.key, k);
            assert_eq!(e.record, r.record());
        }
        let tail = &part.bytes[part.bytes.len() - part.meta_len as usize..];
        let meta = PartMeta::decode(ID, part.bytes.len() as u64, tail).unwrap();
        for (k, r) in model {
            let got = lookup(part, &meta, k).expect("a stored key is found");
            assert_eq!(got.record, r.record());
        }
    }

    #[test]
    fn roundtrip_with_many_blocks_and_objects() {
        let model = sample_model(3000);
        let part = build(&model, small_blocks());
        assert_eq!(part.entry_count, 3000);
        assert_eq!(&part.first_key, model.keys().next().unwrap());
        assert_eq!(&part.last_key, model.keys().last().unwrap());
        check_against(&model, &part);
        let view = TableView::decode(ID, &part.bytes).unwrap();
        assert!(view.meta.block_count() > 100, "{}", view.meta.block_count());
        assert_eq!(view.meta.props.tombstones, 750);
        // Keys around and between the stored ones are not found.
        let tail = &part.bytes[part.bytes.len() - part.meta_len as usize..];
        let meta = PartMeta::decode(ID, part.bytes.len() as u64, tail).unwrap();
        for probe in [&b""[..], b"\0", b"\0d00000000/name-00000x", b"\xff"] {
            assert!(lookup(&part, &meta, probe).is_none(), "{probe:?}");
        }
        assert_eq!(meta.seek_block(b"").map(|h| h.index), Some(0));
        assert_eq!(meta.seek_block(b"\xff"), None);
    }

    #[test]
    fn blocks_stay_within_chunks() {
        let model = sample_model(5000);
        let opts = small_blocks();
        let part = build(&model, opts.clone());
        let view = TableView::decode(ID, &part.bytes).unwrap();
        for i in 0..view.meta.block_count() {
            let h = view.meta.block(i).unwrap();
            let (start, end) = (h.offset as usize, (h.offset + h.len) as usize - 1);
            assert_eq!(
                start / opts.chunk_bytes,
                end / opts.chunk_bytes,
                "block {i}"
            );
            assert!(h.len as usize <= opts.block_bytes);
        }
        // An entry larger than a chunk makes a block of its own.
        let big = vec![5u8; 5000];
        let mut b = TableBuilder::new(ID, opts);
        b.add(b"a", &Owned::Inline(vec![1], vec![]).record())
            .unwrap();
        b.add(b"b", &Owned::Inline(big.clone(), vec![]).record())
            .unwrap();
        b.add(b"c", &Owned::Tombstone.record()).unwrap();
        let part = b.finish();
        let view = TableView::decode(ID, &part.bytes).unwrap();
        assert_eq!(view.meta.block_count(), 3);
        assert_eq!(
            view.entries().unwrap()[1].record,
            Owned::Inline(big, vec![]).record()
        );
    }

    #[test]
    fn an_empty_part_roundtrips() {
        let part = TableBuilder::new(ID, TableOptions::default()).finish();
        let view = TableView::decode(ID, &part.bytes).unwrap();
        assert!(view.entries().unwrap().is_empty());
        assert_eq!(view.meta.find_block(b"a"), None);
        assert_eq!(part.meta_len as usize, part.bytes.len() - HEADER_LEN);
    }

    #[test]
    fn a_part_without_filter_finds_by_range() {
        let model = sample_model(500);
        let part = build(
            &model,
            TableOptions {
                tree: Tree::Refs,
                bits_per_key: 0,
                ..small_blocks()
            },
        );
        check_against(&model, &part);
        let view = TableView::decode(ID, &part.bytes).unwrap();
        assert_eq!(view.meta.props.tree, Some(Tree::Refs));
    }

    #[test]
    fn the_builder_refuses_bad_input() {
        let mut b = TableBuilder::new(ID, TableOptions::default());
        b.add(b"b", &Record::Tombstone).unwrap();
        assert!(b.add(b"b", &Record::Tombstone).is_err());
        assert!(b.add(b"a", &Record::Tombstone).is_err());
        let inconsistent = [
            Record::Value {
                value_len: 3,
                body: Body::Empty,
                meta: b"",
                primary: false,
            },
            Record::Value {
                value_len: 3,
                body: Body::Inline(b"ab"),
                meta: b"",
                primary: false,
            },
            Record::Value {
                value_len: 0,
                body: Body::Empty,
                meta: &[0; 256],
                primary: false,
            },
            Record::Value {
                value_len: 0,
                body: Body::Empty,
                meta: b"",
                primary: true,
            },
        ];
        for r in &inconsistent {
            assert!(b.add(b"c", r).is_err(), "{r:?}");
        }
        assert!(b.add(&vec![b'z'; 70_000], &Record::Tombstone).is_err());
        assert_eq!(b.finish().entry_count, 1);
    }

    #[test]
    fn a_part_under_another_name_is_refused() {
        let part = build(&sample_model(10), TableOptions::default());
        let other = PartId { epoch: 4, seq: 10 };
        assert!(TableView::decode(other, &part.bytes).is_err());
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_an_error() {
        let model = sample_model(120);
        let part = build(&model, small_blocks());
        let data = &part.bytes[..];
        let meta_at = data.len() - part.meta_len as usize;
        for i in 0..data.len() {
            let mut bad = data.to_vec();
            bad[i] ^= 0x10;
            let whole = TableView::decode(ID, &bad).and_then(|v| v.entries().map(|_| ()));
            assert!(whole.is_err(), "flip at {i}");
            // Read as a reader does: meta from the tail (its checksum covers all but
            // the whole-object checksum), blocks by their own checksums.
            let trailer_crc = data.len() - 12..data.len() - 8;
            if i >= meta_at && !trailer_crc.contains(&i) {
                assert!(
                    PartMeta::decode(ID, bad.len() as u64, &bad[meta_at..]).is_err(),
                    "meta flip at {i}"
                );
            }
        }
        let meta = TableView::decode(ID, data).unwrap().meta;
        for b in 0..meta.block_count() {
            let h = meta.block(b).unwrap();
            let block = &data[h.offset as usize..(h.offset + h.len) as usize];
            for i in 0..block.len() {
                let mut bad = block.to_vec();
                bad[i] ^= 0x01;
                assert!(Block::decode(&bad).is_err(), "block {b}, flip at {i}");
            }
            for n in 0..block.len() {
                assert!(Block::decode(&block[..n]).is_err(), "block {b}, cut at {n}");
            }
        }
        for n in 0..data.len() {
            assert!(TableView::decode(ID, &data[..n]).is_err(), "cut at {n}");
            if n < part.meta_len as usize {
                let tail = &data[data.len() - n..];
                assert!(
                    PartMeta::decode(ID, data.len() as u64, tail).is_err(),
                    "tail {n}"
                );
            }
        }
    }

    /// Recompute a block's checksum after changing its bytes.
    fn reseal_block(mut block: Vec<u8>) -> Vec<u8> {
        let n = block.len();
        if n >= 4 {
            let crc = crc32c::crc32c(&block[..n - 4]);
            block[n - 4..].copy_from_slice(&crc.to_le_bytes());
        }
        block
    }

    /// Recompute the meta checksum and the trailer after changing a part's bytes.
    fn reseal_part(mut data: Vec<u8>) -> Vec<u8> {
        let n = data.len();
        if n < HEADER_LEN + MIN_META_LEN {
            return data;
        }
        let footer = n - MIN_META_LEN;
        let filter_off = u32::from_le_bytes(data[footer..footer + 4].try_into().unwrap());
        if (filter_off as usize) <= footer {
            let crc = crc32c::crc32c(&data[filter_off as usize..footer + FOOTER_LEN - 4]);
            data[footer + FOOTER_LEN - 4..footer + FOOTER_LEN].copy_from_slice(&crc.to_le_bytes());
        }
        data.truncate(n - 12);
        write_trailer(&mut data, END_MAGIC);
        data
    }

    fn owned() -> impl Strategy<Value = Owned> {
        let meta = proptest::collection::vec(any::<u8>(), 0..4);
        prop_oneof![
            Just(Owned::Tombstone),
            meta.clone().prop_map(Owned::Empty),
            (proptest::collection::vec(any::<u8>(), 0..40), meta.clone())
                .prop_map(|(v, m)| Owned::Inline(v, m)),
            (any::<u32>(), any::<u8>(), any::<u32>(), meta, any::<bool>())
                .prop_map(|(l, o, at, m, p)| Owned::Located(l, o, at, m, p)),
        ]
    }

    proptest! {
        #[test]
        fn separators_lie_between_their_keys(
            a in proptest::collection::vec(any::<u8>(), 0..8),
            b in proptest::collection::vec(any::<u8>(), 0..8)) {
            let (a, b) = if a < b { (a, b) } else { (b, a) };
            prop_assume!(a < b);
            let s = separator(&a, &b);
            prop_assert!(a <= s && s < b, "{:?} {:?} {:?}", a, s, b);
            prop_assert!(s.len() <= a.len());
        }

        #[test]
        fn any_sorted_input_roundtrips_and_is_found(
            model in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..12), owned(), 0..150),
            probes in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..12), 0..20),
            block_bytes in 16usize..600,
            chunk_bytes in prop_oneof![Just(0usize), 64usize..2048],
            bits_per_key in 0u8..20) {
            let opts = TableOptions { block_bytes, chunk_bytes, bits_per_key, ..TableOptions::default() };
            let part = build(&model, opts);
            check_against(&model, &part);
            let tail = &part.bytes[part.bytes.len() - part.meta_len as usize..];
            let meta = PartMeta::decode(ID, part.bytes.len() as u64, tail).unwrap();
            for p in &probes {
                let got = lookup(&part, &meta, p).map(|e| e.record);
                prop_assert_eq!(got, model.get(p).map(Owned::record));
            }
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(v) = TableView::decode(ID, &data) { let _ = v.entries(); }
            let _ = PartMeta::decode(ID, data.len() as u64 + 7, &data);
            if let Ok(b) = Block::decode(&data) { let _ = b.entries(); let _ = b.get(b"k"); }
        }

        #[test]
        fn decode_never_panics_when_checksums_are_fixed_up(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            key in proptest::collection::vec(any::<u8>(), 0..12)) {
            let part = build(&sample_model(60), small_blocks());
            let mut data = part.bytes.to_vec();
            for (i, x) in &flips { let n = data.len(); data[i % n] ^= x; }
            let data = reseal_part(data);
            if let Ok(v) = TableView::decode(ID, &data) {
                let _ = v.entries();
                if let Some(h) = v.meta.find_block(&key) {
                    if let Ok(b) = Block::decode(v.block_bytes(h)) { let _ = b.get(&key); }
                }
            }
            let meta = TableView::decode(ID, &part.bytes).unwrap().meta;
            let h = meta.block(flips[0].0 % meta.block_count()).unwrap();
            let mut block = part.bytes[h.offset as usize..(h.offset + h.len) as usize].to_vec();
            for (i, x) in &flips { let n = block.len(); block[i % n] ^= x; }
            let block = reseal_block(block);
            if let Ok(b) = Block::decode(&block) { let _ = b.entries(); let _ = b.get(&key); }
        }
    }
}
