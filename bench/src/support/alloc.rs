//! A global allocator that counts live heap bytes, to measure index memory exactly.
//!
//! It counts what the system allocator really uses per allocation: glibc malloc
//! rounds a request up to a 16-byte multiple including an 8-byte header, with a
//! 32-byte minimum. Counting only requested sizes would hide that overhead.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);

pub struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; only counters
// are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(chunk(new_size), Ordering::Relaxed);
            LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        }
        p
    }
}

/// Bytes glibc malloc uses for a request of `size` bytes.
fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

/// Heap bytes currently allocated, including malloc's per-allocation overhead.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// A `kB` field (`VmRSS`, `VmHWM`, …) of `/proc/PROCESS/status` (`PROCESS` is a pid
/// or `self`), in KiB.
pub fn proc_status_kib(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
}

/// Peak resident set size of this process, from /proc (0 if unavailable).
pub fn peak_rss_bytes() -> u64 {
    proc_status_kib("self", "VmHWM").map_or(0, |kb| kb * 1024)
}
