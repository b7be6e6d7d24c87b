//! Memory back to the OS after connections end, on every worker thread.
//!
//! mimalloc gives each thread its own heap. A block freed by another thread (a connection task
//! that tokio moved to another worker, or a frame freed by the worker that wrote it) only goes
//! on the owning page's list of remote frees; the page counts as in use, and is not purged, until
//! its owning thread next collects, which it does only while it allocates. After a mass
//! disconnect the workers go idle, so with more than one worker the freed pages stayed: RSS 5 s
//! after 10,000 clients left was about 12x idle on every path (echo, error replies, broadcast;
//! close or reset), against 1.2x with one worker (bench/README.md, "Memory coming back").
//!
//! So each worker, as it parks, collects its own heap if connections have ended since it last
//! did (`mi_collect(false)`: remote frees are taken in, empty pages purged). With no connection
//! ending (steady echo or broadcast) a park costs one atomic load.
//!
//! Twin: python-ws/python_ws/reclaim.py (gc and malloc_trim after connections end)

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Connections ended since start; each worker compares it with what it saw at its last collect.
static ENDED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Called when a connection's task has dropped its buffers.
pub fn connection_ended() {
    ENDED.fetch_add(1, Ordering::Relaxed);
}

/// The runtime's `on_thread_park` hook.
pub fn on_worker_park() {
    let ended = ENDED.load(Ordering::Relaxed);
    SEEN.with(|seen| {
        if seen.get() != ended {
            seen.set(ended);
            // SAFETY: mi_collect works on the calling thread's own heap; valid at any time.
            unsafe { libmimalloc_sys::mi_collect(false) }
        }
    });
}
