//! A dropped tokenizer leaves nothing behind. `tokenizers` 0.23 kept each BPE model's split
//! words in a thread-local map that outlived the model, so every tokenizer loaded and used
//! left up to 10,000 words on its thread; a worker that loads and unloads models on
//! long-lived threads grew without bound. A test binary of its own: it counts the whole
//! process's allocations, which tests running beside it would disturb.

use std::alloc::System;

use fleet_inference::text::{Tokenizer, fixture};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed while `work` ran.
fn kept_by(work: impl FnOnce()) -> i64 {
    let region = Region::new(GLOBAL);
    work();
    // Growth and shrinkage by reallocation are in these two already.
    let change = region.change();
    i64::try_from(change.bytes_allocated).unwrap_or(i64::MAX)
        - i64::try_from(change.bytes_deallocated).unwrap_or(i64::MAX)
}

#[test]
fn a_dropped_tokenizer_leaves_nothing_behind_on_the_thread_that_used_it() {
    let dir = std::env::temp_dir().join(format!("fleet-tokenizer-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp folder");
    fixture::write_tokenizer_files(&dir).expect("the tokenizer files");
    let text = "hello wörld, the quick brown fox jumps over the lazy dog <|im_end|>";
    let load_and_use = || {
        let tokenizer = Tokenizer::from_hf_dir(&dir).expect("the fixture tokenizer loads");
        let ids = tokenizer.encode(text).expect("encodes");
        assert_eq!(tokenizer.decode(&ids).expect("decodes"), text);
    };
    // What the first use builds once (the pre-tokenizers' regexes) is not a leak.
    for _ in 0..5 {
        load_and_use();
    }
    let kept = kept_by(|| {
        for _ in 0..200 {
            load_and_use();
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    // With the thread-local word cache, each tokenizer kept about 1 KiB of words here.
    assert!(kept < 16 * 1024, "200 tokenizers loaded, used and dropped kept {kept} bytes");
}
