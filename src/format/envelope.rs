//! Envelopes: how an object is stored when its store compresses or encrypts.
//!
//! Vocabulary:
//! - **plain bytes**: an object as the engine wrote it (a segment, a run, a
//!   checkpoint, a manifest). **Stored bytes**: what the object store holds.
//! - **envelope**: the stored form of a compressed or encrypted object: an
//!   **envelope header** followed by the object's **chunks**.
//! - **chunk**: [`CHUNK_BYTES`] consecutive plain bytes (the last one may be
//!   shorter), compressed on its own when that makes it smaller, then encrypted on its
//!   own when the store is encrypted. A ranged read fetches and opens only the chunks
//!   it covers.
//! - **chunk table**: one entry per chunk in the header: its stored length (with a
//!   flag saying whether it is compressed) and the CRC-32C of its stored bytes, so
//!   plain offsets map to stored offsets without reading any chunk.
//! - **sealing**: XChaCha20-Poly1305 with a random 24-byte nonce per object (chunk `i`
//!   uses the nonce with `i` XORed into its last 8 bytes). Each chunk's associated
//!   data binds the store's identity, the object's name, the fixed part of its
//!   header (so its length and chunk count), the chunk's number and its table entry:
//!   a chunk moved to another place, another object, another name or another store
//!   fails to open, and so does a truncated object.
//! - **header tag**: in an encrypted envelope (version 2), a tag over the whole
//!   header (fixed part and chunk table) with the store's identity and the object's
//!   name, so the header is authenticated on its own, also for an object with no
//!   chunk at all.
//! - **store identity**: random bytes chosen when an encrypted store is created (the
//!   nonce of its key check, `format::encoding`); a [`Cipher`] carries it, so one key
//!   used for two stores cannot move objects between them.
//! - **sealed**: an envelope that authenticates under a store's cipher
//!   ([`Layout::check_sealed`]). An encrypted store reads nothing else.
//!
//! Objects that are neither compressed nor encrypted are stored as plain bytes, with
//! no envelope; every kvfs object starts with its own `KVFS…` magic, so the two are
//! told apart by their first 8 bytes. docs/FORMAT.md ("Envelopes") has the layout.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use super::codec::{read_header, write_header, PutLe, Reader};
use super::{FormatError, FormatResult};

pub const MAGIC: &[u8; 8] = b"KVFSENV1";
/// The version written. Version 1 (no store identity, no header tag) is still read.
pub const VERSION: u16 = 2;
/// The first version, read but no longer written.
const VERSION_1: u16 = 1;
/// Plain bytes per chunk.
pub const CHUNK_BYTES: u32 = 64 << 10;
/// Bytes of the nonce of an encrypted object.
pub const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag of each encrypted chunk.
pub const TAG_LEN: usize = 16;
/// Bytes of an encryption key.
pub const KEY_LEN: usize = 32;
/// Bytes of the header before the chunk table: common header (16), chunk size (4),
/// plain length (8), chunk count (4), nonce (24).
pub const FIXED_LEN: usize = 56;
/// Bytes of one chunk-table entry.
pub const ENTRY_LEN: usize = 8;
/// The smallest possible envelope: a header with an empty table and its CRC.
pub const MIN_LEN: usize = FIXED_LEN + 4;

/// Flag bit: the chunks are encrypted.
const FLAG_ENCRYPTED: u16 = 1;
/// Flag bits 8..16: the codec of the compressed chunks.
const CODEC_SHIFT: u16 = 8;
/// Bit 31 of a table entry's length: the chunk is compressed.
const COMPRESSED_BIT: u32 = 1 << 31;
/// zstd level used for chunks (zstd's default: fast, and a good ratio on text).
const ZSTD_LEVEL: i32 = 3;

const WHAT: &str = "envelope";

/// How the chunks of new objects are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Zstd,
}

impl Compression {
    pub(crate) fn code(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }

    pub(crate) fn from_code(code: u16) -> Option<Compression> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The name used on the command line and in the store's encoding record.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An encryption key, ready to seal and open (its bytes are never printed), and the
/// identity of the store it seals for.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
    store: Arc<[u8]>,
}

impl Cipher {
    /// A cipher for `key`, bound to no store yet (see [`Cipher::for_store`]).
    pub fn new(key: &[u8; KEY_LEN]) -> Cipher {
        Cipher {
            aead: XChaCha20Poly1305::new(key.into()),
            store: Arc::from(&[][..]),
        }
    }

    /// The same key, sealing and opening the objects of the store whose identity is
    /// `store`.
    pub fn for_store(&self, store: &[u8]) -> Cipher {
        Cipher {
            aead: self.aead.clone(),
            store: Arc::from(store),
        }
    }

    /// The identity of the store this cipher is bound to (empty if none).
    pub fn store(&self) -> &[u8] {
        &self.store
    }

    /// Encrypt `buf` in place; returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        // Fails only for messages beyond 256 GiB; chunks are 64 KiB.
        if let Ok(t) = self
            .aead
            .encrypt_in_place_detached(XNonce::from_slice(nonce), ad, buf)
        {
            tag.copy_from_slice(&t);
        }
        tag
    }

    /// Decrypt `buf` in place and check `tag`; false (and `buf` garbage) when the
    /// tag does not match.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> bool {
        tag.len() == TAG_LEN
            && self
                .aead
                .decrypt_in_place_detached(XNonce::from_slice(nonce), ad, buf, Tag::from_slice(tag))
                .is_ok()
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// One chunk-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    stored_len: u32,
    compressed: bool,
    crc: u32,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.stored_len | if self.compressed { COMPRESSED_BIT } else { 0 });
        out.put_u32(self.crc);
    }
}

/// The decoded header of an envelope: everything needed to find and open any chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    version: u16,
    encrypted: bool,
    codec: Compression,
    chunk_bytes: u32,
    plain_len: u64,
    nonce: [u8; NONCE_LEN],
    /// The fixed part of the header, bound into every chunk's associated data.
    fixed: [u8; FIXED_LEN],
    entries: Vec<Entry>,
    /// The header tag (encrypted envelopes of version 2).
    header_tag: Option<[u8; TAG_LEN]>,
    /// `offsets[i]` is where chunk `i` starts in the stored bytes; one more entry
    /// marks the end.
    offsets: Vec<u64>,
}

/// Whether stored bytes start like an envelope.
pub fn is_envelope(stored_prefix: &[u8]) -> bool {
    stored_prefix.len() >= MAGIC.len() && &stored_prefix[..MAGIC.len()] == MAGIC
}

/// The whole header length of the envelope whose first [`FIXED_LEN`] bytes are
/// given (so a reader knows how much to fetch before it can parse the table).
pub fn header_len(fixed: &[u8]) -> FormatResult<usize> {
    let mut r = Reader::new(fixed, WHAT);
    let (version, flags) = read_any_header(&mut r, fixed)?;
    r.bytes(4 + 8)?;
    let count = r.u32()? as usize;
    Ok(table_end(count) + tag_len(version, flags & FLAG_ENCRYPTED != 0) + 4)
}

/// The common header of an envelope of either version: (version, flags).
fn read_any_header(r: &mut Reader<'_>, stored: &[u8]) -> FormatResult<(u16, u16)> {
    let version = match stored.get(8..10) {
        Some([1, 0]) => VERSION_1,
        _ => VERSION,
    };
    let flags = read_header(r, MAGIC, version)?;
    Ok((version, flags))
}

/// Where the chunk table of `count` chunks ends.
fn table_end(count: usize) -> usize {
    FIXED_LEN + count * ENTRY_LEN
}

/// Bytes of the header tag in an envelope of `version`.
fn tag_len(version: u16, encrypted: bool) -> usize {
    if version >= 2 && encrypted {
        TAG_LEN
    } else {
        0
    }
}

/// The header tag's nonce: the object's nonce with all bits of its last 8 bytes
/// flipped (chunk numbers never reach that).
fn header_nonce(base: &[u8; NONCE_LEN]) -> [u8; NONCE_LEN] {
    chunk_nonce(base, u64::MAX)
}

/// Associated data of the header tag: the store, the name and the header bytes
/// before the tag (fixed part and chunk table).
fn header_ad(store: &[u8], name: &str, header: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(store.len() + name.len() + header.len() + 24);
    ad.extend_from_slice(b"kvfs header");
    ad.put_u32(store.len() as u32);
    ad.extend_from_slice(store);
    ad.put_u32(name.len() as u32);
    ad.extend_from_slice(name.as_bytes());
    ad.extend_from_slice(header);
    ad
}

fn chunk_nonce(base: &[u8; NONCE_LEN], index: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *base;
    for (n, b) in nonce[NONCE_LEN - 8..].iter_mut().zip(index.to_le_bytes()) {
        *n ^= b;
    }
    nonce
}

fn chunk_ad(
    version: u16,
    store: &[u8],
    name: &str,
    fixed: &[u8; FIXED_LEN],
    index: u64,
    entry: &Entry,
) -> Vec<u8> {
    let mut ad = Vec::with_capacity(store.len() + name.len() + FIXED_LEN + 36);
    ad.extend_from_slice(b"kvfs chunk");
    if version >= 2 {
        ad.put_u32(store.len() as u32);
        ad.extend_from_slice(store);
    }
    ad.put_u32(name.len() as u32);
    ad.extend_from_slice(name.as_bytes());
    ad.extend_from_slice(fixed);
    ad.put_u64(index);
    entry.encode(&mut ad);
    ad
}

/// Encode `plain` as the envelope stored under `name`, with its layout. `cipher`
/// encrypts (with `nonce`, which must be fresh random bytes); `compression`
/// compresses each chunk that it makes smaller.
pub fn seal(
    name: &str,
    plain: &[u8],
    compression: Compression,
    cipher: Option<&Cipher>,
    nonce: [u8; NONCE_LEN],
) -> (Vec<u8>, Layout) {
    let chunk_bytes = CHUNK_BYTES as usize;
    let count = plain.len().div_ceil(chunk_bytes);
    let nonce = if cipher.is_some() {
        nonce
    } else {
        [0; NONCE_LEN]
    };
    let mut flags = compression.code() << CODEC_SHIFT;
    if cipher.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let tag_at = table_end(count);
    let header_len = tag_at + tag_len(VERSION, cipher.is_some()) + 4;
    // The header first, its table and CRC filled in once the chunks are written
    // after it.
    let mut out = Vec::with_capacity(header_len + plain.len() / 2 + 64);
    write_header(&mut out, MAGIC, VERSION, flags);
    out.put_u32(CHUNK_BYTES);
    out.put_u64(plain.len() as u64);
    out.put_u32(count as u32);
    out.extend_from_slice(&nonce);
    let mut fixed = [0u8; FIXED_LEN];
    fixed.copy_from_slice(&out);
    out.resize(header_len, 0);

    let mut entries = Vec::with_capacity(count);
    // One compression context for every chunk (setting one up allocates).
    let mut compressor = match compression {
        Compression::Zstd => zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(),
        Compression::None => None,
    };
    let mut packed = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk_bytes));
    for (i, chunk) in plain.chunks(chunk_bytes).enumerate() {
        packed.clear();
        let compressed = compressor.as_mut().is_some_and(|c| {
            c.compress_to_buffer(chunk, &mut packed).is_ok() && packed.len() < chunk.len()
        });
        let inner: &[u8] = if compressed { &packed } else { chunk };
        let start = out.len();
        out.extend_from_slice(inner);
        if let Some(c) = cipher {
            let stored_len = (inner.len() + TAG_LEN) as u32;
            // The CRC is of the sealed bytes, which the AD cannot contain yet:
            // it binds the entry with a zero CRC.
            let ad_entry = Entry {
                stored_len,
                compressed,
                crc: 0,
            };
            let ad = chunk_ad(VERSION, c.store(), name, &fixed, i as u64, &ad_entry);
            let tag = c.seal_in_place(&chunk_nonce(&nonce, i as u64), &ad, &mut out[start..]);
            out.extend_from_slice(&tag);
        }
        entries.push(Entry {
            stored_len: (out.len() - start) as u32,
            compressed,
            crc: crc32c::crc32c(&out[start..]),
        });
    }
    let mut table = Vec::with_capacity(count * ENTRY_LEN);
    for e in &entries {
        e.encode(&mut table);
    }
    out[FIXED_LEN..tag_at].copy_from_slice(&table);
    let mut header_tag = None;
    if let Some(c) = cipher {
        let ad = header_ad(c.store(), name, &out[..tag_at]);
        let tag = c.seal_in_place(&header_nonce(&nonce), &ad, &mut []);
        out[tag_at..tag_at + TAG_LEN].copy_from_slice(&tag);
        header_tag = Some(tag);
    }
    let crc = crc32c::crc32c(&out[..header_len - 4]);
    out[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
    let layout = Layout::new(
        VERSION,
        header_tag,
        cipher.is_some(),
        compression,
        CHUNK_BYTES,
        plain.len() as u64,
        fixed,
        entries,
    );
    (out, layout)
}

impl Layout {
    /// Parse an envelope header (at least [`header_len`] bytes of the object; more
    /// are ignored). `stored_len`, when known, is checked against the table.
    pub fn decode(stored: &[u8], stored_len: Option<u64>) -> FormatResult<Layout> {
        let mut r = Reader::new(stored, WHAT);
        let (version, flags) = read_any_header(&mut r, stored)?;
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        if flags & !(FLAG_ENCRYPTED | (0xff << CODEC_SHIFT)) != 0 {
            return Err(r.invalid(format!("unknown flags {flags:#06x}")));
        }
        let codec = Compression::from_code(flags >> CODEC_SHIFT)
            .ok_or_else(|| r.invalid(format!("unknown compression {}", flags >> CODEC_SHIFT)))?;
        let chunk_bytes = r.u32()?;
        if chunk_bytes == 0 || chunk_bytes > 1 << 30 {
            return Err(r.invalid(format!("chunk size {chunk_bytes}")));
        }
        let plain_len = r.u64()?;
        let count = r.u32()? as u64;
        if count != plain_len.div_ceil(chunk_bytes as u64) {
            return Err(r.invalid(format!(
                "{count} chunks cannot hold {plain_len} bytes in chunks of {chunk_bytes}"
            )));
        }
        r.bytes(NONCE_LEN)?;
        let mut fixed = [0u8; FIXED_LEN];
        fixed.copy_from_slice(&stored[..FIXED_LEN]);
        let table_len = (count as usize)
            .checked_mul(ENTRY_LEN)
            .ok_or_else(|| r.invalid("chunk table too large"))?;
        let tag = tag_len(version, encrypted);
        if r.remaining() < table_len + tag + 4 {
            return Err(FormatError::Truncated {
                what: WHAT,
                offset: r.pos(),
                needed: table_len + tag + 4 - r.remaining(),
            });
        }
        let header_end = FIXED_LEN + table_len + tag;
        let stored_crc = u32::from_le_bytes(
            stored[header_end..header_end + 4]
                .try_into()
                .map_err(|_| r.invalid("header checksum"))?,
        );
        let computed = crc32c::crc32c(&stored[..header_end]);
        if stored_crc != computed {
            return Err(FormatError::Checksum {
                what: WHAT,
                stored: stored_crc,
                computed,
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        let overhead = if encrypted { TAG_LEN as u64 } else { 0 };
        for i in 0..count {
            let word = r.u32()?;
            let crc = r.u32()?;
            let entry = Entry {
                stored_len: word & !COMPRESSED_BIT,
                compressed: word & COMPRESSED_BIT != 0,
                crc,
            };
            let plain = chunk_plain_len(plain_len, chunk_bytes, i);
            let len = entry.stored_len as u64;
            let fits = if entry.compressed {
                codec != Compression::None && len >= overhead
            } else {
                len == plain + overhead
            };
            if !fits {
                return Err(r.invalid(format!(
                    "chunk {i}: stored length {len} does not fit {plain} plain bytes"
                )));
            }
            entries.push(entry);
        }
        let header_tag = (tag > 0).then(|| {
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(&stored[header_end - TAG_LEN..header_end]);
            t
        });
        let layout = Layout::new(
            version,
            header_tag,
            encrypted,
            codec,
            chunk_bytes,
            plain_len,
            fixed,
            entries,
        );
        if let Some(total) = stored_len {
            let at = layout.offsets[layout.entries.len()];
            if total != at {
                return Err(r.invalid(format!(
                    "the chunk table covers {at} bytes but the object has {total}"
                )));
            }
        }
        Ok(layout)
    }

    /// A layout from its parts; chunk offsets follow from the table.
    #[allow(clippy::too_many_arguments)]
    fn new(
        version: u16,
        header_tag: Option<[u8; TAG_LEN]>,
        encrypted: bool,
        codec: Compression,
        chunk_bytes: u32,
        plain_len: u64,
        fixed: [u8; FIXED_LEN],
        entries: Vec<Entry>,
    ) -> Layout {
        let mut offsets = Vec::with_capacity(entries.len() + 1);
        let mut at = (table_end(entries.len()) + tag_len(version, encrypted) + 4) as u64;
        offsets.push(at);
        for e in &entries {
            at += e.stored_len as u64;
            offsets.push(at);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&fixed[FIXED_LEN - NONCE_LEN..]);
        Layout {
            version,
            encrypted,
            codec,
            chunk_bytes,
            plain_len,
            nonce,
            fixed,
            entries,
            header_tag,
            offsets,
        }
    }

    /// Check that this envelope, stored under `name`, was sealed with `cipher` for
    /// its store: it is encrypted, and its header tag authenticates (version 2). An
    /// envelope of version 1 (no store identity) is accepted only when `legacy` is
    /// true and it has a chunk (whose tag authenticates its header); its chunks
    /// are still checked as they are opened.
    pub fn check_sealed(&self, name: &str, cipher: &Cipher, legacy: bool) -> FormatResult<()> {
        let refuse = |reason: &str| {
            Err(FormatError::Invalid {
                what: WHAT,
                reason: format!("not sealed with this store's key: {reason}"),
            })
        };
        if !self.encrypted {
            return refuse("an unencrypted envelope");
        }
        if self.version == VERSION_1 {
            if !legacy {
                return refuse("an envelope of version 1, not bound to this store");
            }
            if self.entries.is_empty() {
                return refuse("an envelope of version 1 with no chunk");
            }
            return Ok(());
        }
        let Some(tag) = self.header_tag else {
            return refuse("no header tag");
        };
        let mut header = Vec::with_capacity(table_end(self.entries.len()));
        header.extend_from_slice(&self.fixed);
        for e in &self.entries {
            e.encode(&mut header);
        }
        let ad = header_ad(cipher.store(), name, &header);
        if !cipher.open_in_place(&header_nonce(&self.nonce), &ad, &mut [], &tag) {
            return Err(FormatError::HeaderAuthentication { what: WHAT });
        }
        Ok(())
    }

    /// The envelope format version of this object.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Length of the object's plain bytes.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// About how many bytes of memory this layout takes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Layout>()
            + self.entries.len() * std::mem::size_of::<Entry>()
            + self.offsets.len() * std::mem::size_of::<u64>()
    }

    /// Number of chunks stored compressed.
    pub fn compressed_chunks(&self) -> usize {
        self.entries.iter().filter(|e| e.compressed).count()
    }

    /// The chunks that hold plain bytes `range` (which must lie within the object
    /// and not be empty).
    pub fn chunks_for(&self, range: &Range<u64>) -> Range<usize> {
        let c = self.chunk_bytes as u64;
        (range.start / c) as usize..range.end.div_ceil(c) as usize
    }

    /// Where chunks `chunks` lie in the stored bytes.
    pub fn stored_range(&self, chunks: &Range<usize>) -> Range<u64> {
        self.offsets[chunks.start]..self.offsets[chunks.end]
    }

    /// The plain bytes of `chunks`, from their stored bytes (exactly
    /// [`Layout::stored_range`] of them). `name` is the object's name.
    pub fn open_chunks(
        &self,
        name: &str,
        cipher: Option<&Cipher>,
        chunks: Range<usize>,
        stored: &[u8],
    ) -> FormatResult<Vec<u8>> {
        let base = self.offsets[chunks.start];
        let first_plain = chunks.start as u64 * self.chunk_bytes as u64;
        let last_plain = (chunks.end as u64 * self.chunk_bytes as u64).min(self.plain_len);
        let mut out = vec![0u8; last_plain.saturating_sub(first_plain) as usize];
        let mut at = 0usize;
        // One decompression context for every chunk, and one buffer for decrypting
        // compressed chunks: each chunk is copied once, into `out` or that buffer.
        let mut decompressor = None;
        let mut scratch = Vec::new();
        let invalid = |reason: String| FormatError::Invalid { what: WHAT, reason };
        for i in chunks {
            let (Some(e), Some(&start), Some(&end)) = (
                self.entries.get(i),
                self.offsets.get(i),
                self.offsets.get(i + 1),
            ) else {
                return Err(invalid(format!("no chunk {i}")));
            };
            let (from, to) = ((start - base) as usize, (end - base) as usize);
            let Some(bytes) = stored.get(from..to) else {
                return Err(FormatError::Truncated {
                    what: WHAT,
                    offset: stored.len(),
                    needed: to - stored.len().min(to),
                });
            };
            let computed = crc32c::crc32c(bytes);
            if computed != e.crc {
                return Err(FormatError::Checksum {
                    what: WHAT,
                    stored: e.crc,
                    computed,
                });
            }
            let plain = chunk_plain_len(self.plain_len, self.chunk_bytes, i as u64) as usize;
            let Some(dst) = out.get_mut(at..at + plain) else {
                return Err(invalid(format!("chunk {i} lies beyond the object")));
            };
            at += plain;
            // The chunk's bytes without its tag, decrypted: in `dst` when they are the
            // plain bytes, else in `scratch`.
            let sealed_len = bytes.len() - if self.encrypted { TAG_LEN } else { 0 };
            let (body, tag) = bytes.split_at(sealed_len);
            let inner: &[u8] = match (self.encrypted, e.compressed) {
                (false, false) => {
                    dst.copy_from_slice(body);
                    continue;
                }
                (false, true) => body,
                (true, _) => {
                    let Some(c) = cipher else {
                        return Err(invalid(
                            "the object is encrypted and no key was given".to_string(),
                        ));
                    };
                    let ad_entry = Entry { crc: 0, ..*e };
                    let ad = chunk_ad(
                        self.version,
                        c.store(),
                        name,
                        &self.fixed,
                        i as u64,
                        &ad_entry,
                    );
                    let nonce = chunk_nonce(&self.nonce, i as u64);
                    let target: &mut [u8] = if e.compressed {
                        scratch.clear();
                        scratch.extend_from_slice(body);
                        &mut scratch
                    } else {
                        dst.copy_from_slice(body);
                        dst
                    };
                    if !c.open_in_place(&nonce, &ad, target, tag) {
                        return Err(FormatError::Authentication {
                            what: WHAT,
                            chunk: i as u64,
                        });
                    }
                    if !e.compressed {
                        continue;
                    }
                    &scratch
                }
            };
            if decompressor.is_none() {
                decompressor = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|err| invalid(format!("zstd: {err}")))?,
                );
            }
            let Some(d) = decompressor.as_mut() else {
                continue;
            };
            let Some(dst) = out.get_mut(at - plain..at) else {
                return Err(invalid(format!("chunk {i} lies beyond the object")));
            };
            let n = d
                .decompress_to_buffer(inner, dst)
                .map_err(|err| invalid(format!("chunk {i} does not decompress: {err}")))?;
            if n != plain {
                return Err(invalid(format!(
                    "chunk {i} decompresses to {n} bytes, not {plain}"
                )));
            }
        }
        Ok(out)
    }

    /// Plain bytes `range` of the object, given the stored bytes of the chunks that
    /// hold it ([`Layout::stored_range`] of [`Layout::chunks_for`]).
    pub fn open_range(
        &self,
        name: &str,
        cipher: Option<&Cipher>,
        range: &Range<u64>,
        stored: &[u8],
    ) -> FormatResult<Bytes> {
        let chunks = self.chunks_for(range);
        let first_plain = chunks.start as u64 * self.chunk_bytes as u64;
        let plain = self.open_chunks(name, cipher, chunks, stored)?;
        let from = (range.start - first_plain) as usize;
        let to = (range.end - first_plain) as usize;
        if to > plain.len() || from > to {
            return Err(FormatError::Invalid {
                what: WHAT,
                reason: format!("range {range:?} lies beyond the object"),
            });
        }
        // A copy when the range is a part of its chunks: a slice would keep every
        // byte of them alive as long as the caller keeps the range (in a cache, say).
        if from == 0 && to == plain.len() {
            Ok(Bytes::from(plain))
        } else {
            Ok(Bytes::copy_from_slice(&plain[from..to]))
        }
    }
}

fn chunk_plain_len(plain_len: u64, chunk_bytes: u32, index: u64) -> u64 {
    let c = chunk_bytes as u64;
    plain_len.saturating_sub(index * c).min(c)
}

/// Decode a whole envelope stored under `name`: its layout and plain bytes. With a
/// `cipher`, only an envelope sealed with it is opened ([`Layout::check_sealed`]).
pub fn open(
    name: &str,
    stored: &[u8],
    cipher: Option<&Cipher>,
    legacy: bool,
) -> FormatResult<(Layout, Vec<u8>)> {
    let layout = Layout::decode(stored, Some(stored.len() as u64))?;
    if let Some(c) = cipher {
        layout.check_sealed(name, c, legacy)?;
    }
    let body = &stored[layout.offsets[0] as usize..];
    let plain = layout.open_chunks(name, cipher, 0..layout.entries.len(), body)?;
    Ok((layout, plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open_plain(name: &str, stored: &[u8], cipher: Option<&Cipher>) -> FormatResult<Vec<u8>> {
        open(name, stored, cipher, false).map(|(_, plain)| plain)
    }

    #[test]
    fn seal_returns_the_layout_that_decoding_finds() {
        let plain = vec![b'z'; 150_000];
        let c = cipher();
        for cipher in [None, Some(&c)] {
            let (stored, layout) = seal("run/l", &plain, Compression::Zstd, cipher, [6; NONCE_LEN]);
            assert_eq!(
                Layout::decode(&stored, Some(stored.len() as u64)).unwrap(),
                layout
            );
        }
    }

    fn cipher() -> Cipher {
        Cipher::new(&[7; KEY_LEN])
    }

    fn text(n: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect()
    }

    #[test]
    fn roundtrips_every_combination() {
        for n in [
            0,
            1,
            100,
            CHUNK_BYTES as usize,
            CHUNK_BYTES as usize * 3 + 17,
        ] {
            let plain = text(n);
            for comp in [Compression::None, Compression::Zstd] {
                for c in [None, Some(cipher())] {
                    let stored = seal("seg/a", &plain, comp, c.as_ref(), [9; NONCE_LEN]).0;
                    assert!(is_envelope(&stored));
                    assert_eq!(
                        header_len(&stored[..FIXED_LEN]).unwrap() as u64,
                        Layout::decode(&stored, None).unwrap().offsets[0]
                    );
                    assert_eq!(open_plain("seg/a", &stored, c.as_ref()).unwrap(), plain);
                }
            }
        }
    }

    #[test]
    fn compresses_text_and_leaves_random_bytes_alone() {
        let plain = text(1 << 20);
        let stored = seal("run/x", &plain, Compression::Zstd, None, [0; NONCE_LEN]).0;
        assert!(stored.len() < plain.len() / 20, "{}", stored.len());
        let layout = Layout::decode(&stored, Some(stored.len() as u64)).unwrap();
        assert_eq!(layout.compressed_chunks(), 16);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let stored = seal("run/y", &noise, Compression::Zstd, None, [0; NONCE_LEN]).0;
        let layout = Layout::decode(&stored, Some(stored.len() as u64)).unwrap();
        assert_eq!(layout.compressed_chunks(), 0);
        assert_eq!(open_plain("run/y", &stored, None).unwrap(), noise);
    }

    #[test]
    fn a_small_range_holds_only_its_own_bytes() {
        let plain = text(3 * CHUNK_BYTES as usize);
        let c = cipher();
        for comp in [Compression::None, Compression::Zstd] {
            let stored = seal("run/s", &plain, comp, Some(&c), [3; NONCE_LEN]).0;
            let layout = Layout::decode(&stored, None).unwrap();
            let range = 70_000..71_024;
            let sr = layout.stored_range(&layout.chunks_for(&range));
            let got = layout
                .open_range(
                    "run/s",
                    Some(&c),
                    &range,
                    &stored[sr.start as usize..sr.end as usize],
                )
                .unwrap();
            assert_eq!(&got[..], &plain[70_000..71_024]);
            // Unique and no larger than the range: not a view into the 64 KiB chunk.
            let owned = got.try_into_mut().expect("the range owns its bytes");
            assert!(owned.capacity() <= 2 * 1024, "{}", owned.capacity());
        }
    }

    #[test]
    fn ranged_reads_open_only_their_chunks() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let c = cipher();
        let stored = seal("run/r", &plain, Compression::Zstd, Some(&c), [3; NONCE_LEN]).0;
        let layout = Layout::decode(&stored[..stored.len().min(4096)], None).unwrap();
        for range in [
            0..1,
            65_535..65_537,
            131_072..131_073,
            10..299_999,
            299_999..300_000,
        ] {
            let chunks = layout.chunks_for(&range);
            let sr = layout.stored_range(&chunks);
            let got = layout
                .open_range(
                    "run/r",
                    Some(&c),
                    &range,
                    &stored[sr.start as usize..sr.end as usize],
                )
                .unwrap();
            assert_eq!(got, &plain[range.start as usize..range.end as usize]);
        }
    }

    #[test]
    fn wrong_key_swapped_name_and_tampering_fail() {
        let plain = text(200_000);
        let c = cipher();
        let stored = seal("seg/a", &plain, Compression::None, Some(&c), [1; NONCE_LEN]).0;
        let wrong = Cipher::new(&[8; KEY_LEN]);
        assert!(matches!(
            open_plain("seg/a", &stored, Some(&wrong)),
            Err(FormatError::HeaderAuthentication { .. })
        ));
        assert!(matches!(
            open_plain("seg/b", &stored, Some(&c)),
            Err(FormatError::HeaderAuthentication { .. })
        ));
        assert!(open_plain("seg/a", &stored, None).is_err());
        // A flipped byte in a chunk whose CRC is fixed up still fails authentication.
        let layout = Layout::decode(&stored, None).unwrap();
        let mut bad = stored.clone();
        let at = layout.offsets[1] as usize + 5;
        bad[at] ^= 1;
        let crc = crc32c::crc32c(&bad[layout.offsets[1] as usize..layout.offsets[2] as usize]);
        let entry_at = FIXED_LEN + ENTRY_LEN + 4;
        bad[entry_at..entry_at + 4].copy_from_slice(&crc.to_le_bytes());
        let header_end = layout.offsets[0] as usize - 4;
        let hcrc = crc32c::crc32c(&bad[..header_end]);
        bad[header_end..header_end + 4].copy_from_slice(&hcrc.to_le_bytes());
        // The changed table fails the header tag.
        assert!(matches!(
            open_plain("seg/a", &bad, Some(&c)),
            Err(FormatError::HeaderAuthentication { .. })
        ));
        // Opening the chunk alone (a layout from the original header) fails its tag.
        let sr = layout.stored_range(&(1..2));
        assert!(matches!(
            layout.open_chunks(
                "seg/a",
                Some(&c),
                1..2,
                &bad[sr.start as usize..sr.end as usize]
            ),
            Err(FormatError::Authentication { chunk: 1, .. }) | Err(FormatError::Checksum { .. })
        ));
        // Two chunks swapped, with the table fixed up, fail too.
        let mut swapped = stored.clone();
        let (a, b) = (layout.offsets[0] as usize, layout.offsets[1] as usize);
        let first = stored[a..b].to_vec();
        let second = stored[b..b + (b - a)].to_vec();
        swapped[a..b].copy_from_slice(&second);
        swapped[b..b + (b - a)].copy_from_slice(&first);
        for (i, chunk) in [&second, &first].iter().enumerate() {
            let at = FIXED_LEN + i * ENTRY_LEN + 4;
            swapped[at..at + 4].copy_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
        }
        let hcrc = crc32c::crc32c(&swapped[..header_end]);
        swapped[header_end..header_end + 4].copy_from_slice(&hcrc.to_le_bytes());
        assert!(matches!(
            open_plain("seg/a", &swapped, Some(&c)),
            Err(FormatError::Authentication { .. } | FormatError::HeaderAuthentication { .. })
        ));
    }

    /// An encrypted envelope of version 1 (no header tag, no store identity), as the
    /// first envelope format wrote it.
    fn seal_version_1(name: &str, plain: &[u8], c: &Cipher, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let count = plain.len().div_ceil(CHUNK_BYTES as usize);
        let mut out = Vec::new();
        write_header(&mut out, MAGIC, VERSION_1, FLAG_ENCRYPTED);
        out.put_u32(CHUNK_BYTES);
        out.put_u64(plain.len() as u64);
        out.put_u32(count as u32);
        out.extend_from_slice(&nonce);
        let mut fixed = [0u8; FIXED_LEN];
        fixed.copy_from_slice(&out);
        let mut chunks = Vec::new();
        for (i, chunk) in plain.chunks(CHUNK_BYTES as usize).enumerate() {
            let stored_len = (chunk.len() + TAG_LEN) as u32;
            let ad_entry = Entry {
                stored_len,
                compressed: false,
                crc: 0,
            };
            let ad = chunk_ad(VERSION_1, &[], name, &fixed, i as u64, &ad_entry);
            let mut body = chunk.to_vec();
            let tag = c.seal_in_place(&chunk_nonce(&nonce, i as u64), &ad, &mut body);
            body.extend_from_slice(&tag);
            Entry {
                stored_len,
                compressed: false,
                crc: crc32c::crc32c(&body),
            }
            .encode(&mut out);
            chunks.extend_from_slice(&body);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&chunks);
        out
    }

    /// Clear the encrypted flag of an envelope and fix its header CRC (what anyone
    /// with write access to the bucket can do).
    fn clear_encrypted_flag(stored: &mut [u8]) {
        let header_end = header_len(&stored[..FIXED_LEN]).unwrap() - 4;
        stored[10] &= !(FLAG_ENCRYPTED as u8);
        let crc = crc32c::crc32c(&stored[..header_end]);
        stored[header_end..header_end + 4].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn only_envelopes_sealed_for_the_store_open_with_its_key() {
        let key = cipher();
        let store_a = key.for_store(b"store a");
        let store_b = key.for_store(b"store b");
        for n in [0usize, 10, 100_000] {
            let plain = text(n);
            let sealed = seal(
                "seg/1",
                &plain,
                Compression::Zstd,
                Some(&store_a),
                [2; NONCE_LEN],
            )
            .0;
            assert_eq!(open_plain("seg/1", &sealed, Some(&store_a)).unwrap(), plain);
            // Another store with the same key, or another name.
            assert!(matches!(
                open_plain("seg/1", &sealed, Some(&store_b)),
                Err(FormatError::HeaderAuthentication { .. })
            ));
            assert!(open_plain("seg/2", &sealed, Some(&store_a)).is_err());
            // A compressed (unencrypted) envelope, or one whose flag was cleared.
            let unencrypted = seal("seg/1", &plain, Compression::Zstd, None, [0; NONCE_LEN]).0;
            let err = open_plain("seg/1", &unencrypted, Some(&store_a)).unwrap_err();
            assert!(err.to_string().contains("not sealed"), "{err}");
            let mut cleared = sealed.clone();
            clear_encrypted_flag(&mut cleared);
            assert!(open_plain("seg/1", &cleared, Some(&store_a)).is_err());
            // A changed header tag.
            let mut tagged = sealed.clone();
            let at = header_len(&sealed[..FIXED_LEN]).unwrap() - 5;
            tagged[at] ^= 1;
            let crc = crc32c::crc32c(&tagged[..at + 1]);
            tagged[at + 1..at + 5].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(
                open_plain("seg/1", &tagged, Some(&store_a)),
                Err(FormatError::HeaderAuthentication { .. })
            ));
            // Version 1: read only in a legacy store, and only with a chunk.
            let old = seal_version_1("seg/1", &plain, &key, [4; NONCE_LEN]);
            assert!(open("seg/1", &old, Some(&store_a), false).is_err());
            let legacy = open("seg/1", &old, Some(&store_a), true);
            if n == 0 {
                assert!(legacy.is_err());
            } else {
                assert_eq!(legacy.unwrap().1, plain);
            }
        }
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_an_error() {
        let plain = text(5000);
        for c in [None, Some(cipher())] {
            let stored = seal("m", &plain, Compression::Zstd, c.as_ref(), [2; NONCE_LEN]).0;
            for i in 0..stored.len() {
                let mut bad = stored.clone();
                bad[i] ^= 0x40;
                assert!(open_plain("m", &bad, c.as_ref()).is_err(), "byte {i}");
            }
            for n in 0..stored.len() {
                assert!(
                    open_plain("m", &stored[..n], c.as_ref()).is_err(),
                    "length {n}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let c = cipher();
            let mut input = MAGIC.to_vec();
            input.extend_from_slice(&bytes);
            let _ = open_plain("x", &bytes, Some(&c));
            let _ = open_plain("x", &input, Some(&c));
            let _ = open_plain("x", &input, None);
            let _ = header_len(&input);
            if let Ok(layout) = Layout::decode(&input, None) {
                if layout.plain_len > 0 {
                    let range = 0..layout.plain_len.min(10);
                    let chunks = layout.chunks_for(&range);
                    let _ = layout.open_range("x", Some(&c), &range, &input);
                    let _ = layout.stored_range(&chunks);
                }
            }
        }

        #[test]
        fn any_plain_bytes_roundtrip(plain in proptest::collection::vec(any::<u8>(), 0..200_000),
                                     zstd in any::<bool>(), encrypt in any::<bool>(),
                                     start in any::<u64>(), len in 1u64..100_000) {
            let c = cipher();
            let comp = if zstd { Compression::Zstd } else { Compression::None };
            let cipher = encrypt.then_some(&c);
            let stored = seal("n", &plain, comp, cipher, [5; NONCE_LEN]).0;
            prop_assert_eq!(&open_plain("n", &stored, cipher).unwrap(), &plain);
            if !plain.is_empty() {
                let start = start % plain.len() as u64;
                let end = (start + len).min(plain.len() as u64);
                let range = start..end;
                let layout = Layout::decode(&stored, Some(stored.len() as u64)).unwrap();
                let sr = layout.stored_range(&layout.chunks_for(&range));
                let got = layout.open_range("n", cipher, &range, &stored[sr.start as usize..sr.end as usize]).unwrap();
                prop_assert_eq!(&got[..], &plain[start as usize..end as usize]);
            }
        }
    }
}
