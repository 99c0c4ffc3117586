//! Sorted runs: values rewritten in key order by compaction and the cleaner.
//!
//! A run holds put entries (the segment entry encoding, see [`super::segment`]) with
//! strictly increasing keys, grouped into **blocks** of about [`DEFAULT_BLOCK_BYTES`],
//! then a **block index** (first key, offset, length and entry count of each block)
//! and a fixed-size **footer** that locates the index. Keys of one directory are
//! therefore contiguous in one object, and reading a directory back costs a few large
//! ranged GETs instead of one GET per file.
//!
//! A value in a run is located exactly like a value in a segment (offset of its
//! checksum), so a ranged GET of one value verifies on its own, and index locations,
//! checkpoints and link entries refer to runs by their [`ObjectId`] (with
//! [`super::names::RUN_BIT`] set).
//!
//! ```text
//! header (32): magic "KVFSRUN1" | version u16 | flags u16 = 0 | reserved u32
//!              | epoch u64 | seq u64
//! entries:     put entries, keys strictly increasing, block after block
//! block index: per block: offset u32 | len u32 | entry_count u32
//!              | first_key_len u16 | first_key
//! footer (16): index_offset u32 | block_count u32 | entry_count u32 | index_crc u32
//! trailer (12): crc32c u32 (of all preceding bytes) | magic "KVFSRUNE"
//! ```

use bytes::Bytes;

use super::codec::{check_trailer, read_header, write_header, write_trailer, PutLe, Reader};
use super::names::ObjectId;
use super::segment::{parse_entry, write_put, EntryKind, EntryRef};
use super::FormatResult;

pub const MAGIC: &[u8; 8] = b"KVFSRUN1";
pub const END_MAGIC: &[u8; 8] = b"KVFSRUNE";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
/// Footer (16) and trailer (12): what a reader fetches first to find the index.
pub const TAIL_LEN: usize = 28;
/// Target size of a block.
pub const DEFAULT_BLOCK_BYTES: usize = 64 << 10;
const WHAT: &str = "run";

/// Where one block lies and which key it starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    pub offset: u32,
    pub len: u32,
    pub entry_count: u32,
    pub first_key: Vec<u8>,
}

/// Accumulates a run in memory. Keys must be appended in strictly increasing order.
#[derive(Debug)]
pub struct RunBuilder {
    id: ObjectId,
    buf: Vec<u8>,
    blocks: Vec<BlockMeta>,
    block_bytes: usize,
    entries: u32,
    last_key: Option<Vec<u8>>,
}

impl RunBuilder {
    /// A builder for run `id` (an id with the run bit set).
    pub fn new(id: ObjectId, block_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        write_header(&mut buf, MAGIC, VERSION, 0);
        buf.put_u64(id.writer_epoch());
        buf.put_u64(id.seq);
        RunBuilder {
            id,
            buf,
            blocks: Vec::new(),
            block_bytes: block_bytes.max(1),
            entries: 0,
            last_key: None,
        }
    }

    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Bytes so far, without block index and footer.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether `key` may come next (it sorts after every key so far).
    pub fn accepts(&self, key: &[u8]) -> bool {
        self.last_key.as_deref().is_none_or(|last| key > last)
    }

    /// Append a value; returns the offset of the stored value (its checksum). The
    /// caller keeps keys increasing (see [`RunBuilder::accepts`]), keys and metadata
    /// within the segment limits, and the run under 4 GiB.
    pub fn put(&mut self, key: &[u8], meta: &[u8], value: &[u8]) -> u32 {
        debug_assert!(self.accepts(key), "run keys must increase");
        let at = self.buf.len() as u32;
        let starts_block = match self.blocks.last() {
            None => true,
            Some(b) => (at - b.offset) as usize >= self.block_bytes,
        };
        if starts_block {
            self.close_block();
            self.blocks.push(BlockMeta {
                offset: at,
                len: 0,
                entry_count: 0,
                first_key: key.to_vec(),
            });
        }
        let value_at = write_put(&mut self.buf, key, meta, value);
        self.entries += 1;
        if let Some(b) = self.blocks.last_mut() {
            b.entry_count += 1;
        }
        self.last_key = Some(key.to_vec());
        value_at
    }

    fn close_block(&mut self) {
        let end = self.buf.len() as u32;
        if let Some(b) = self.blocks.last_mut() {
            b.len = end - b.offset;
        }
    }

    /// Append block index, footer and trailer; returns the object bytes.
    pub fn finish(mut self) -> Bytes {
        self.close_block();
        let index_offset = self.buf.len() as u32;
        for b in &self.blocks {
            self.buf.put_u32(b.offset);
            self.buf.put_u32(b.len);
            self.buf.put_u32(b.entry_count);
            self.buf.put_u16(b.first_key.len() as u16);
            self.buf.extend_from_slice(&b.first_key);
        }
        let index_crc = crc32c::crc32c(&self.buf[index_offset as usize..]);
        self.buf.put_u32(index_offset);
        self.buf.put_u32(self.blocks.len() as u32);
        self.buf.put_u32(self.entries);
        self.buf.put_u32(index_crc);
        write_trailer(&mut self.buf, END_MAGIC);
        Bytes::from(self.buf)
    }
}

/// A verified run.
#[derive(Debug)]
pub struct RunView<'a> {
    pub id: ObjectId,
    pub entry_count: u32,
    pub blocks: Vec<BlockMeta>,
    body: &'a [u8],
    data_end: usize,
}

impl<'a> RunView<'a> {
    /// Verify the whole-object checksum, header, footer and block index. Entries are
    /// parsed (and their checksums verified) by [`RunView::entries`].
    pub fn decode(buf: &'a [u8]) -> FormatResult<RunView<'a>> {
        let body = check_trailer(buf, END_MAGIC, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        let flags = read_header(&mut r, MAGIC, VERSION)?;
        if flags != 0 {
            return Err(r.invalid(format!("unknown flags {flags:#06x}")));
        }
        let epoch = r.u64()?;
        let seq = r.u64()?;
        if epoch & super::names::RUN_BIT != 0 {
            return Err(r.invalid("epoch out of range"));
        }
        if body.len() < HEADER_LEN + 16 {
            return Err(r.invalid("missing footer"));
        }
        if body.len() > u32::MAX as usize {
            return Err(r.invalid("run larger than 4 GiB"));
        }
        let footer_at = body.len() - 16;
        let mut f = Reader::at(body, footer_at, WHAT);
        let index_offset = f.u32()? as usize;
        let block_count = f.u32()? as usize;
        let entry_count = f.u32()?;
        let index_crc = f.u32()?;
        if index_offset < HEADER_LEN || index_offset > footer_at {
            return Err(r.invalid(format!("index offset {index_offset} out of range")));
        }
        let index = &body[index_offset..footer_at];
        if crc32c::crc32c(index) != index_crc {
            return Err(r.invalid("block index checksum mismatch"));
        }
        // Every block takes at least 14 bytes of index: bound the count first.
        if block_count > index.len() / 14 {
            return Err(r.invalid(format!("block count {block_count} exceeds the index")));
        }
        let mut blocks: Vec<BlockMeta> = Vec::with_capacity(block_count);
        let mut ir = Reader::new(index, WHAT);
        let mut expect_offset = HEADER_LEN;
        let mut total = 0u64;
        for i in 0..block_count {
            let offset = ir.u32()?;
            let len = ir.u32()?;
            let count = ir.u32()?;
            let key_len = ir.u16()? as usize;
            let first_key = ir.bytes(key_len)?.to_vec();
            if offset as usize != expect_offset || len == 0 || count == 0 {
                return Err(r.invalid(format!("block {i} is malformed")));
            }
            expect_offset = offset as usize + len as usize;
            if expect_offset > index_offset {
                return Err(r.invalid(format!("block {i} overlaps the index")));
            }
            total += count as u64;
            blocks.push(BlockMeta {
                offset,
                len,
                entry_count: count,
                first_key,
            });
        }
        if ir.remaining() != 0 {
            return Err(r.invalid("trailing bytes after the block index"));
        }
        if expect_offset != index_offset || total != entry_count as u64 {
            return Err(r.invalid("blocks do not cover the entries"));
        }
        Ok(RunView {
            id: ObjectId::run(epoch, seq),
            entry_count,
            blocks,
            body,
            data_end: index_offset,
        })
    }

    /// Every entry in key order, each verified; an error (then the end) at the first
    /// malformed one, at a key out of order, or at an entry that is not a put.
    pub fn entries(&self) -> FormatResult<Vec<EntryRef<'a>>> {
        let data = &self.body[..self.data_end];
        let mut out: Vec<EntryRef<'a>> = Vec::with_capacity(self.entry_count as usize);
        for (i, b) in self.blocks.iter().enumerate() {
            let mut pos = b.offset as usize;
            let end = pos + b.len as usize;
            for n in 0..b.entry_count {
                let (e, next) = parse_entry(data, pos, true)?;
                let bad = |reason: String| super::FormatError::Invalid { what: WHAT, reason };
                if e.kind != EntryKind::Put {
                    return Err(bad(format!("block {i} holds a {:?} entry", e.kind)));
                }
                if n == 0 && e.key != b.first_key.as_slice() {
                    return Err(bad(format!("block {i} does not start with its index key")));
                }
                if out.last().is_some_and(|p| p.key >= e.key) {
                    return Err(bad(format!("keys out of order in block {i}")));
                }
                if next > end {
                    return Err(bad(format!("entry crosses the end of block {i}")));
                }
                pos = next;
                out.push(e);
            }
            if pos != end {
                return Err(super::FormatError::Invalid {
                    what: WHAT,
                    reason: format!("block {i} has bytes after its last entry"),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(block_bytes: usize) -> Bytes {
        let mut b = RunBuilder::new(ObjectId::run(3, 7), block_bytes);
        for i in 0..50u32 {
            let key = format!("dir/file{i:04}");
            b.put(key.as_bytes(), b"attrs", &vec![i as u8; (i * 13) as usize]);
        }
        b.finish()
    }

    #[test]
    fn roundtrip_with_blocks() {
        let data = sample(512);
        let v = RunView::decode(&data).unwrap();
        assert_eq!(v.id, ObjectId::run(3, 7));
        assert!(v.blocks.len() > 5, "{} blocks", v.blocks.len());
        let es = v.entries().unwrap();
        assert_eq!(es.len(), 50);
        assert_eq!(es[10].key, b"dir/file0010");
        assert_eq!(es[10].meta, b"attrs");
        assert_eq!(es[10].value, &vec![10u8; 130][..]);
        // A value read by range verifies on its own, as in a segment.
        let off = es[10].value_offset as usize;
        let stored = data.slice(off..off + 4 + 130);
        assert_eq!(
            super::super::segment::decode_value(&stored).unwrap(),
            &vec![10u8; 130][..]
        );
    }

    #[test]
    fn empty_run_roundtrips() {
        let data = RunBuilder::new(ObjectId::run(1, 1), 1024).finish();
        let v = RunView::decode(&data).unwrap();
        assert!(v.entries().unwrap().is_empty());
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let data = sample(700);
        for i in 0..data.len() {
            let mut bad = data.to_vec();
            bad[i] ^= 0x20;
            let r = RunView::decode(&bad).and_then(|v| v.entries().map(|_| ()));
            assert!(r.is_err(), "flip at {i}");
        }
        for n in 0..data.len() {
            assert!(RunView::decode(&data[..n]).is_err(), "cut at {n}");
        }
    }

    fn refix(mut body: Vec<u8>) -> Vec<u8> {
        write_trailer(&mut body, END_MAGIC);
        body
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(v) = RunView::decode(&data) { let _ = v.entries(); }
        }

        #[test]
        fn decode_never_panics_when_crc_is_fixed_up(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            let data = sample(300);
            let mut body = data[..data.len() - 12].to_vec();
            for (i, x) in flips { let n = body.len(); body[i % n] ^= x; }
            let data = refix(body);
            if let Ok(v) = RunView::decode(&data) { let _ = v.entries(); }
        }

        #[test]
        fn any_sorted_input_roundtrips(
            mut kvs in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 1..20),
                proptest::collection::vec(any::<u8>(), 0..100), 0..40),
            block in 1usize..400) {
            let mut b = RunBuilder::new(ObjectId::run(1, 2), block);
            for (k, v) in &kvs { b.put(k, b"", v); }
            let data = b.finish();
            let view = RunView::decode(&data).unwrap();
            let got: Vec<(Vec<u8>, Vec<u8>)> = view.entries().unwrap()
                .iter().map(|e| (e.key.to_vec(), e.value.to_vec())).collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = std::mem::take(&mut kvs).into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}
