//! Object names inside a store prefix.
//!
//! | name                          | object                                      |
//! |-------------------------------|---------------------------------------------|
//! | `seg/EEEEEEEEEEEEEEEEEEEE-SSSSSSSSSSSSSSSSSSSS` | log segment `SSS…` of writer epoch `EEE…` |
//! | `run/EEEEEEEEEEEEEEEEEEEE-NNNNNNNNNNNNNNNNNNNN` | sorted run `NNN…` written by writer epoch `EEE…` |
//! | `ckpt/NNNNNNNNNNNNNNNNNNNN`   | checkpoint published by manifest `NNN…`     |
//! | `manifest/NNNNNNNNNNNNNNNNNNNN` | manifest number `NNN…`                    |
//! | `lease`                       | the writer lease (JSON)                     |
//! | `encoding`                    | how the store encrypts and compresses (`format::encoding`) |
//!
//! Numbers are zero-padded to 20 decimal digits so that key order is numeric order.

use std::fmt;

pub const SEGMENT_DIR: &str = "seg/";
pub const RUN_DIR: &str = "run/";
pub const CHECKPOINT_DIR: &str = "ckpt/";
pub const MANIFEST_DIR: &str = "manifest/";
pub const LEASE: &str = "lease";
/// The store's id: 32 hex digits, random, written once (create-if-absent).
pub const STORE_ID: &str = "store-id";

/// Bit 63 of [`ObjectId::epoch`] marks the id of a sorted run rather than a log
/// segment. Writer epochs never come near it.
pub const RUN_BIT: u64 = 1 << 63;

/// Identifies one *data object*: a log segment (the writer epoch that wrote it and its
/// sequence number within that epoch, starting at 1) or, with [`RUN_BIT`] set in
/// `epoch`, a sorted run (the epoch that wrote it and its number within that epoch).
/// Index locations, checkpoint segment tables and link entries all name data objects
/// this way, so a value can move from a segment to a run without a format change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub epoch: u64,
    pub seq: u64,
}

impl ObjectId {
    /// The id of run `seq` written by writer epoch `epoch`.
    pub fn run(epoch: u64, seq: u64) -> ObjectId {
        ObjectId {
            epoch: epoch | RUN_BIT,
            seq,
        }
    }

    /// Whether this names a sorted run (not a log segment).
    pub fn is_run(&self) -> bool {
        self.epoch & RUN_BIT != 0
    }

    /// The writer epoch that wrote the object.
    pub fn writer_epoch(&self) -> u64 {
        self.epoch & !RUN_BIT
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_run() {
            write!(f, "run {}.{}", self.writer_epoch(), self.seq)
        } else {
            write!(f, "{}.{}", self.epoch, self.seq)
        }
    }
}

/// The object name of a data object: `seg/…` for a segment, `run/…` for a run.
pub fn object_name(id: ObjectId) -> String {
    if id.is_run() {
        format!("{RUN_DIR}{:020}-{:020}", id.writer_epoch(), id.seq)
    } else {
        format!("{SEGMENT_DIR}{:020}-{:020}", id.epoch, id.seq)
    }
}

/// Prefix under which all segments of one epoch are listed.
pub fn segment_epoch_prefix(epoch: u64) -> String {
    format!("{SEGMENT_DIR}{epoch:020}-")
}

pub fn checkpoint_name(n: u64) -> String {
    format!("{CHECKPOINT_DIR}{n:020}")
}

pub fn manifest_name(n: u64) -> String {
    format!("{MANIFEST_DIR}{n:020}")
}

/// What an object name says the object is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Segment(ObjectId),
    /// A sorted run (its id has [`RUN_BIT`] set).
    Run(ObjectId),
    Checkpoint(u64),
    Manifest(u64),
    Lease,
    /// The store's encoding record.
    Encoding,
    /// The store's id ([`STORE_ID`]).
    StoreId,
    /// Not a name kvfs writes (a foreign object in the prefix).
    Unknown,
}

fn parse_num(s: &str) -> Option<u64> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Classify an object name.
pub fn parse_name(name: &str) -> ObjectKind {
    if name == LEASE {
        return ObjectKind::Lease;
    }
    if name == super::encoding::ENCODING {
        return ObjectKind::Encoding;
    }
    if name == STORE_ID {
        return ObjectKind::StoreId;
    }
    if let Some(rest) = name.strip_prefix(SEGMENT_DIR) {
        if let Some((e, s)) = rest.split_once('-') {
            if let (Some(epoch), Some(seq)) = (parse_num(e), parse_num(s)) {
                if epoch & RUN_BIT == 0 {
                    return ObjectKind::Segment(ObjectId { epoch, seq });
                }
            }
        }
        return ObjectKind::Unknown;
    }
    if let Some(rest) = name.strip_prefix(RUN_DIR) {
        if let Some((e, s)) = rest.split_once('-') {
            if let (Some(epoch), Some(seq)) = (parse_num(e), parse_num(s)) {
                if epoch & RUN_BIT == 0 {
                    return ObjectKind::Run(ObjectId::run(epoch, seq));
                }
            }
        }
        return ObjectKind::Unknown;
    }
    if let Some(n) = name.strip_prefix(CHECKPOINT_DIR).and_then(parse_num) {
        return ObjectKind::Checkpoint(n);
    }
    if let Some(n) = name.strip_prefix(MANIFEST_DIR).and_then(parse_num) {
        return ObjectKind::Manifest(n);
    }
    ObjectKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let id = ObjectId { epoch: 3, seq: 17 };
        assert_eq!(parse_name(&object_name(id)), ObjectKind::Segment(id));
        assert_eq!(parse_name(&checkpoint_name(9)), ObjectKind::Checkpoint(9));
        assert_eq!(parse_name(&manifest_name(12)), ObjectKind::Manifest(12));
        assert_eq!(parse_name("lease"), ObjectKind::Lease);
        let run = ObjectId::run(4, 2);
        assert!(run.is_run() && run.writer_epoch() == 4);
        assert_eq!(
            object_name(run),
            "run/00000000000000000004-00000000000000000002"
        );
        assert_eq!(parse_name(&object_name(run)), ObjectKind::Run(run));
        assert_eq!(parse_name("run/1-2"), ObjectKind::Unknown);
        assert_eq!(parse_name("seg/x"), ObjectKind::Unknown);
        assert_eq!(parse_name("manifest/12"), ObjectKind::Unknown);
        assert_eq!(parse_name("notes.txt"), ObjectKind::Unknown);
        assert!(
            object_name(ObjectId { epoch: 1, seq: 9 })
                < object_name(ObjectId { epoch: 1, seq: 10 })
        );
    }
}
