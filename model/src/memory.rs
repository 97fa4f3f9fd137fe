//! Handing freed memory back to the system where a command's memory shrinks for good: after a
//! model is loaded, the f32 temporaries of its conversions (a bf16 embedding read in f32, each
//! projection before quantization) are freed, and an allocator that keeps freed pages for
//! reuse (the binary's jemalloc does, for speed) would hold them to the end of the run. The
//! allocator is the binary's choice, so the binary registers how to release
//! ([`set_release_freed`]); without a registration nothing is done.

use std::sync::OnceLock;

static RELEASE_FREED: OnceLock<fn()> = OnceLock::new();

/// Registers how the process's allocator hands freed pages back (once; later calls are
/// ignored).
pub fn set_release_freed(release: fn()) {
    let _ = RELEASE_FREED.set(release);
}

/// Hands the pages of freed buffers back to the system, if the binary registered how.
pub fn release_freed() {
    if let Some(release) = RELEASE_FREED.get() {
        release();
    }
}
