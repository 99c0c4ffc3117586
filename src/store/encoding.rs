//! Choosing how a store is encoded when it is opened: the encryption key, the
//! compression of new objects, and the checks against the store's encoding record
//! (`format::encoding`), so that a missing or wrong key fails at once, before any
//! object is read.
//!
//! Rules:
//! - A store is encrypted from its creation or never: a key given for a new (empty)
//!   store makes it encrypted; a key given for an existing plain store is refused,
//!   and so is opening an encrypted store without its key or with another key.
//! - Compression can be chosen at any time. The record keeps the writers' default,
//!   so `--compression zstd` given once sticks; objects already written keep their
//!   encoding until GC rewrites them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::envelope::{os_random, EnvelopeStore, Random};
use super::{DynStore, PutMode, StoreError};
use crate::format::encoding::{EncodingRecord, ENCODING};
use crate::format::envelope::{Cipher, Compression, KEY_LEN, NONCE_LEN};
use crate::format::names::{parse_name, ObjectKind};
use crate::format::FormatError;

/// Why a store's encoding could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EncodingError {
    #[error("store {store} is encrypted: give its key with --encryption-key-file FILE (or KVFS_ENCRYPTION_KEY_FILE)")]
    MissingKey { store: String },
    #[error("wrong encryption key for store {store}: it was encrypted with another key")]
    WrongKey { store: String },
    #[error("store {store} is not encrypted, and a store is encrypted from its creation or never; to encrypt its data, copy it into a new store opened with the key (or leave out --encryption-key-file)")]
    NotEncrypted { store: String },
    #[error("encryption key file {path}: {problem}")]
    KeyFile { path: PathBuf, problem: String },
    #[error("the encoding record of {store} is corrupt: {source}")]
    Corrupt {
        store: String,
        #[source]
        source: FormatError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An encryption key read from a key file.
#[derive(Clone, Debug)]
pub struct EncryptionKey {
    cipher: Cipher,
}

impl EncryptionKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> EncryptionKey {
        EncryptionKey {
            cipher: Cipher::new(bytes),
        }
    }

    /// Read a key file: exactly 32 bytes (such as from
    /// `head -c 32 /dev/urandom`), or 64 hexadecimal digits (such as from
    /// `openssl rand -hex 32`) with optional surrounding whitespace. A file that
    /// others may read is accepted with a warning.
    pub fn from_file(path: &Path) -> Result<EncryptionKey, EncodingError> {
        let fail = |problem: String| EncodingError::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        let raw = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let key = parse_key(&raw).ok_or_else(|| {
            fail(format!(
                "holds {} bytes; a key is exactly 32 bytes (head -c 32 /dev/urandom > FILE) or 64 hexadecimal digits",
                raw.len()
            ))
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    log::warn!(
                        "encryption key file {} can be read by other users (chmod 600 it)",
                        path.display()
                    );
                }
            }
        }
        Ok(EncryptionKey::from_bytes(&key))
    }

    pub(crate) fn cipher(&self) -> &Cipher {
        &self.cipher
    }
}

fn parse_key(raw: &[u8]) -> Option<[u8; KEY_LEN]> {
    if let Ok(key) = <[u8; KEY_LEN]>::try_from(raw) {
        return Some(key);
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() != KEY_LEN * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// How to encode a store: the key, and the compression of new objects.
#[derive(Clone)]
pub struct EncodingOptions {
    /// The store's key, if it is (or is to be) encrypted.
    pub key: Option<EncryptionKey>,
    /// Compression of the objects this process writes; `None` uses the store's
    /// recorded default (no compression for a store without a record).
    pub compression: Option<Compression>,
    /// Source of nonces.
    pub random: Random,
}

impl Default for EncodingOptions {
    fn default() -> Self {
        EncodingOptions {
            key: None,
            compression: None,
            random: os_random(),
        }
    }
}

impl std::fmt::Debug for EncodingOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodingOptions")
            .field("encrypted", &self.key.is_some())
            .field("compression", &self.compression)
            .finish()
    }
}

async fn read_record(store: &DynStore) -> Result<Option<(EncodingRecord, String)>, EncodingError> {
    match store.get(ENCODING).await {
        Ok(got) => {
            let record =
                EncodingRecord::decode(&got.data).map_err(|source| EncodingError::Corrupt {
                    store: store.describe(),
                    source,
                })?;
            Ok(Some((record, got.etag)))
        }
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How an open store is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encoding {
    pub encrypted: bool,
    /// How this handle compresses the objects it writes.
    pub compression: Compression,
}

/// Set up the encoding of the store behind `store` (which holds the store's objects
/// as they are stored), checking the key against its record. Returns the store the
/// engine should use: `store` itself for a plain store with nothing to change, or an
/// [`EnvelopeStore`] over it. A `writable` opener may create or update the record.
pub async fn open_encoded(
    store: DynStore,
    opts: &EncodingOptions,
    writable: bool,
) -> Result<(DynStore, Encoding), EncodingError> {
    let describe = store.describe();
    let mut record = read_record(&store).await?;
    if record.is_none() {
        let wants = opts.key.is_some() || opts.compression == Some(Compression::Zstd);
        if !wants {
            return Ok((store, Encoding::default()));
        }
        let objects = store.list("").await?;
        let holds_store = objects.iter().any(|o| {
            matches!(
                parse_name(&o.key),
                ObjectKind::Manifest(_)
                    | ObjectKind::Segment(_)
                    | ObjectKind::Run(_)
                    | ObjectKind::Checkpoint(_)
            )
        });
        let empty = objects
            .iter()
            .all(|o| matches!(parse_name(&o.key), ObjectKind::Lease));
        if opts.key.is_some() && holds_store {
            return Err(EncodingError::NotEncrypted { store: describe });
        }
        if !writable || (!empty && (opts.key.is_some() || !holds_store)) {
            // Nothing to record: a reader of a plain store, or a prefix holding other
            // things (opening it will refuse, naming them).
            return Ok(layer(
                store,
                opts,
                opts.compression.unwrap_or_default(),
                None,
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        (opts.random)(&mut nonce);
        let new = EncodingRecord::new(
            opts.compression.unwrap_or_default(),
            opts.key.as_ref().map(EncryptionKey::cipher),
            nonce,
        );
        match store
            .put(ENCODING, Bytes::from(new.encode()), PutMode::CreateNew)
            .await
        {
            Ok(etag) => {
                log::info!(
                    "store {describe} is {}, compression {}",
                    if new.is_encrypted() {
                        "encrypted"
                    } else {
                        "not encrypted"
                    },
                    new.compression
                );
                record = Some((new, etag));
            }
            // Another opener recorded it first: check against theirs.
            Err(StoreError::PreconditionFailed(_)) => record = read_record(&store).await?,
            Err(e) => return Err(e.into()),
        }
    }
    let Some((record, etag)) = record else {
        return Err(StoreError::NotFound(format!("{ENCODING} (deleted while opening)")).into());
    };
    match (&opts.key, record.is_encrypted()) {
        (None, true) => return Err(EncodingError::MissingKey { store: describe }),
        (Some(_), false) => return Err(EncodingError::NotEncrypted { store: describe }),
        (Some(key), true) if !record.key_matches(key.cipher()) => {
            return Err(EncodingError::WrongKey { store: describe })
        }
        _ => {}
    }
    let compression = opts.compression.unwrap_or(record.compression);
    if writable && compression != record.compression {
        let updated = EncodingRecord {
            compression,
            ..record.clone()
        };
        match store
            .put(
                ENCODING,
                Bytes::from(updated.encode()),
                PutMode::IfMatch(etag),
            )
            .await
        {
            Ok(_) => log::info!("store {describe}: writers now compress with {compression}"),
            Err(StoreError::PreconditionFailed(_)) => {
                log::warn!("store {describe}: the encoding record changed meanwhile; its default compression stays")
            }
            Err(e) => return Err(e.into()),
        }
    }
    if record.is_encrypted() && !record.bound {
        log::warn!(
            "store {describe} was encrypted before envelopes were bound to their store: it \
             also reads older envelopes, which an object of another store sealed with the \
             same key could replace (docs/SEMANTICS.md, \"Encryption: what it protects\")"
        );
    }
    Ok(layer(store, opts, compression, Some(&record)))
}

fn layer(
    store: DynStore,
    opts: &EncodingOptions,
    compression: Compression,
    record: Option<&EncodingRecord>,
) -> (DynStore, Encoding) {
    // The cipher seals for this store: its identity is the record's key-check nonce.
    let cipher = opts
        .key
        .as_ref()
        .map(|k| match record.and_then(|r| r.store_id()) {
            Some(id) => k.cipher().for_store(id),
            None => k.cipher().clone(),
        });
    let legacy = record.is_some_and(|r| r.is_encrypted() && !r.bound);
    let layered: DynStore = Arc::new(
        EnvelopeStore::new(store, cipher, compression, opts.random.clone())
            .with_legacy_envelopes(legacy),
    );
    let encoding = Encoding {
        encrypted: opts.key.is_some(),
        compression,
    };
    (layered, encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_files() {
        assert_eq!(parse_key(&[7; 32]), Some([7; 32]));
        let hex = "00".repeat(31) + "ff\n";
        let mut want = [0u8; 32];
        want[31] = 0xff;
        assert_eq!(parse_key(hex.as_bytes()), Some(want));
        assert_eq!(parse_key(&[7; 31]), None);
        assert_eq!(parse_key(&[7; 33]), None);
        assert_eq!(parse_key("zz".repeat(32).as_bytes()), None);
        assert_eq!(parse_key(b""), None);
    }
}
