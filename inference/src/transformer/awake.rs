//! The pool's other threads kept awake while a decode step runs on one of them.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The most tokens in a step whose pool threads are kept awake ([`KeepAwake`]): decode
/// steps of up to 64 sequences. A step of prompt chunks has long matmuls, whose helpers
/// rarely find themselves asleep, and there the awake helpers' constant search for work
/// cost 4% of a 512-token prefill (contention on the step thread's job queue).
pub(crate) const KEEP_AWAKE_TOKENS: usize = 64;

/// The pool's other threads kept busy while a step runs on this one: each takes a job
/// that looks for rayon work (a matmul's chunks) without pause and runs it, until the
/// step ends (this is dropped). A thread of rayon's idles a few dozen rounds, then
/// sleeps, and a decode step's matmuls come every 20-100 µs on a small model with serial
/// work between them, so without this one matmul in two found its helpers asleep and
/// waited for the kernel to wake them (a single SmolLM2 stream on 2 threads ran 1.56x its
/// 1-thread speed, llama.cpp's spinning threads 1.91x). Between finds the thread yields
/// to the OS, so the process's other threads still run.
///
/// Made and dropped on the step's thread (it is not `Send`).
pub(crate) struct KeepAwake {
    done: Arc<AtomicBool>,
    _on_this_thread: PhantomData<*const ()>,
}

thread_local! {
    /// How many steps this thread is running (a step waiting inside a matmul may take up
    /// another model's step): a helper job that lands here goes back to them at once.
    static STEPS: Cell<u32> = const { Cell::new(0) };
}

impl KeepAwake {
    /// Called on the pool thread that runs the step.
    pub(crate) fn start() -> Self {
        let done = Arc::new(AtomicBool::new(false));
        STEPS.set(STEPS.get() + 1);
        for _ in 1..rayon::current_num_threads() {
            let done = Arc::clone(&done);
            // Detached, so the step never waits for a helper busy with other work.
            rayon::spawn(move || help_until(&done));
        }
        Self { done, _on_this_thread: PhantomData }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        STEPS.set(STEPS.get().saturating_sub(1));
    }
}

/// Runs the pool's work as it comes until `done`, yielding to the OS between finds;
/// returns at once on a thread that is running a step (it must get back to it).
fn help_until(done: &AtomicBool) {
    while !done.load(Ordering::Acquire) && STEPS.get() == 0 {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper job that lands on the thread of a step returns at once (the step it
    /// would spin for is the one it blocks); elsewhere it helps until the step is done.
    #[test]
    fn a_helper_on_a_step_thread_returns_at_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let (sent, got) = std::sync::mpsc::channel();
        let never = Arc::new(AtomicBool::new(false));
        let never_done = Arc::clone(&never);
        pool.spawn(move || {
            let _step = KeepAwake::start();
            help_until(&never_done);
            let _ = sent.send(());
        });
        let returned = got.recv_timeout(std::time::Duration::from_secs(10));
        never.store(true, Ordering::Release);
        assert!(returned.is_ok(), "the helper spun on the step's own thread");
    }
}
