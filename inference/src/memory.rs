//! Giving the allocator's free pages back to the system after a model load.
//!
//! Loading reads every tensor from the file into a buffer, repacks it into the kernels'
//! layout and frees the buffer. glibc's malloc serves those buffers from its heaps once a
//! large one has been freed (its mmap threshold rises to the largest freed block, up to
//! 32 MiB), so the freed ones stay mapped as holes between the weights that outlive them:
//! about 30 MB on SmolLM2-135M, a third of its file, held for the worker's life.
//! `malloc_trim` hands every whole free page of every arena back (`madvise(DONTNEED)`).

/// Returns the pages of freed memory to the system, where the allocator can (glibc).
pub fn return_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no
    // pointers from us and is safe to call from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
