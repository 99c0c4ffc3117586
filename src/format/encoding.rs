//! The store's encoding record (object `encoding`): whether the store is encrypted,
//! with a key check that tells a right key from a wrong one before anything else is
//! read, and the compression writers use by default.
//!
//! A store without this object has only plain objects (no envelopes). The record is
//! written once, create-if-absent, when a store is created encrypted or when
//! compression is first chosen for it; a writer that is told another compression
//! replaces it (`If-Match`). It is never encrypted itself: it holds no secret, and
//! the key check is sealed with the key it checks.

use super::codec::{check_trailer, read_header, write_header, write_trailer, PutLe, Reader};
use super::envelope::{Cipher, Compression, NONCE_LEN, TAG_LEN};
use super::FormatResult;

pub const MAGIC: &[u8; 8] = b"KVFSENC1";
pub const END_MAGIC: &[u8; 8] = b"KVFSENCE";
pub const VERSION: u16 = 1;
/// The object name of the record.
pub const ENCODING: &str = "encoding";

const FLAG_ENCRYPTED: u16 = 1;
/// Flag: the store's envelopes are bound to it (version 2 only); its key check
/// binds this flag, so clearing it makes the key check fail.
const FLAG_BOUND: u16 = 2;
/// What the key check seals.
const KEY_CHECK_PLAIN: &[u8; 16] = b"kvfs key check 1";
const KEY_CHECK_AD: &[u8] = b"kvfs encoding record";
const KEY_CHECK_AD_BOUND: &[u8] = b"kvfs encoding record, bound envelopes";
const WHAT: &str = "encoding record";

/// The decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodingRecord {
    /// Compression writers use unless told otherwise.
    pub compression: Compression,
    /// For an encrypted store: the nonce and sealed bytes of the key check. The
    /// nonce is random and fresh for each store: it is the store's identity, which
    /// every envelope of a bound store binds.
    pub key_check: Option<([u8; NONCE_LEN], Vec<u8>)>,
    /// Whether the store reads only envelopes bound to it (every encrypted store
    /// created since envelopes have a version 2; older ones also read version 1).
    pub bound: bool,
}

impl EncodingRecord {
    /// A record for a new store; `cipher` makes it encrypted (with `nonce`, fresh
    /// random bytes, for its key check).
    pub fn new(
        compression: Compression,
        cipher: Option<&Cipher>,
        nonce: [u8; NONCE_LEN],
    ) -> EncodingRecord {
        EncodingRecord {
            compression,
            key_check: cipher.map(|c| {
                let mut sealed = KEY_CHECK_PLAIN.to_vec();
                let tag = c.seal_in_place(&nonce, KEY_CHECK_AD_BOUND, &mut sealed);
                sealed.extend_from_slice(&tag);
                (nonce, sealed)
            }),
            bound: cipher.is_some(),
        }
    }

    /// The store's identity (the key check's nonce), if it is encrypted.
    pub fn store_id(&self) -> Option<&[u8; NONCE_LEN]> {
        self.key_check.as_ref().map(|(nonce, _)| nonce)
    }

    pub fn is_encrypted(&self) -> bool {
        self.key_check.is_some()
    }

    /// Whether `cipher` is the key this store is encrypted with.
    pub fn key_matches(&self, cipher: &Cipher) -> bool {
        match &self.key_check {
            Some((nonce, sealed)) => {
                let (body, tag) = sealed.split_at(sealed.len().saturating_sub(TAG_LEN));
                let mut plain = body.to_vec();
                let ad = if self.bound {
                    KEY_CHECK_AD_BOUND
                } else {
                    KEY_CHECK_AD
                };
                cipher.open_in_place(nonce, ad, &mut plain, tag) && plain == KEY_CHECK_PLAIN
            }
            None => false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        let mut flags = 0;
        if self.is_encrypted() {
            flags |= FLAG_ENCRYPTED;
        }
        if self.bound {
            flags |= FLAG_BOUND;
        }
        write_header(&mut out, MAGIC, VERSION, flags);
        out.put_u8(self.compression.code() as u8);
        if let Some((nonce, sealed)) = &self.key_check {
            out.extend_from_slice(nonce);
            out.extend_from_slice(sealed);
        }
        write_trailer(&mut out, END_MAGIC);
        out
    }

    pub fn decode(buf: &[u8]) -> FormatResult<EncodingRecord> {
        let body = check_trailer(buf, END_MAGIC, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        let flags = read_header(&mut r, MAGIC, VERSION)?;
        if flags & !(FLAG_ENCRYPTED | FLAG_BOUND) != 0 {
            return Err(r.invalid(format!("unknown flags {flags:#06x}")));
        }
        let bound = flags & FLAG_BOUND != 0;
        if bound && flags & FLAG_ENCRYPTED == 0 {
            return Err(r.invalid("bound envelopes in a store that is not encrypted"));
        }
        let code = r.u8()?;
        let compression = Compression::from_code(code as u16)
            .ok_or_else(|| r.invalid(format!("unknown compression {code}")))?;
        let key_check = if flags & FLAG_ENCRYPTED != 0 {
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(r.bytes(NONCE_LEN)?);
            let sealed = r.bytes(KEY_CHECK_PLAIN.len() + TAG_LEN)?.to_vec();
            Some((nonce, sealed))
        } else {
            None
        };
        if r.remaining() != 0 {
            return Err(r.invalid(format!("{} unexpected trailing bytes", r.remaining())));
        }
        Ok(EncodingRecord {
            compression,
            key_check,
            bound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::envelope::KEY_LEN;
    use proptest::prelude::*;

    #[test]
    fn roundtrips_and_checks_keys() {
        let key = Cipher::new(&[1; KEY_LEN]);
        let other = Cipher::new(&[2; KEY_LEN]);
        let rec = EncodingRecord::new(Compression::Zstd, Some(&key), [4; NONCE_LEN]);
        let back = EncodingRecord::decode(&rec.encode()).unwrap();
        assert_eq!(back, rec);
        assert!(back.is_encrypted() && back.key_matches(&key) && !back.key_matches(&other));
        let plain = EncodingRecord::new(Compression::None, None, [0; NONCE_LEN]);
        let back = EncodingRecord::decode(&plain.encode()).unwrap();
        assert!(!back.is_encrypted() && !back.key_matches(&key));
        assert_eq!(back.compression, Compression::None);
    }

    #[test]
    fn the_bound_flag_cannot_be_cleared_and_old_records_still_open() {
        let key = Cipher::new(&[1; KEY_LEN]);
        let rec = EncodingRecord::new(Compression::None, Some(&key), [4; NONCE_LEN]);
        assert!(rec.bound);
        assert_eq!(rec.store_id(), Some(&[4; NONCE_LEN]));
        // Clearing the flag (and fixing the checksum) makes the key check fail.
        let downgraded = EncodingRecord {
            bound: false,
            ..rec.clone()
        };
        let back = EncodingRecord::decode(&downgraded.encode()).unwrap();
        assert!(!back.key_matches(&key));
        // A record written before envelopes were bound: sealed without the flag.
        let mut sealed = KEY_CHECK_PLAIN.to_vec();
        let tag = key.seal_in_place(&[6; NONCE_LEN], KEY_CHECK_AD, &mut sealed);
        sealed.extend_from_slice(&tag);
        let old = EncodingRecord {
            compression: Compression::Zstd,
            key_check: Some(([6; NONCE_LEN], sealed)),
            bound: false,
        };
        let back = EncodingRecord::decode(&old.encode()).unwrap();
        assert!(back.key_matches(&key) && !back.bound);
    }

    #[test]
    fn corruption_is_an_error() {
        let rec = EncodingRecord::new(
            Compression::Zstd,
            Some(&Cipher::new(&[1; KEY_LEN])),
            [4; NONCE_LEN],
        );
        let bytes = rec.encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(EncodingRecord::decode(&bad).is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(EncodingRecord::decode(&bytes[..n]).is_err(), "length {n}");
        }
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = EncodingRecord::decode(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            write_trailer(&mut framed, END_MAGIC);
            let _ = EncodingRecord::decode(&framed);
        }
    }
}
