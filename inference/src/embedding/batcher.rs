//! One thread per CPU embedding model that embeds every caller's texts.
//!
//! Callers (a worker's tasks, each on a blocking thread) hand over their token ids and
//! wait. The thread takes everything waiting, up to [`TOKENS_PER_ROUND`], and runs it as
//! packed passes of at most [`TOKENS_PER_PASS`] real tokens: no padding, and one pass at a
//! time, each spread over every core by the matmuls, instead of several callers' passes
//! competing for the same cores with small matrices. A text's vector does not depend on what
//! else shares its pass (each row of a matmul and each sequence's attention is computed on
//! its own), so callers see the same vectors alone or together.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};

use super::bert::Bert;
use super::pooling;
use crate::{Error, Result};

/// Real tokens per forward pass: enough rows to keep the matmuls efficient, few enough that
/// a pass's activations stay in the last-level cache's neighbourhood (~6 MB per 1,000
/// tokens for all-MiniLM-L6-v2's MLP).
pub const TOKENS_PER_PASS: usize = 2048;

/// Tokens taken from waiting callers into one round; callers that arrive later, or do not
/// fit, wait for the next round (a caller's texts are never split across rounds).
pub const TOKENS_PER_ROUND: usize = 16 * 1024;

/// Callers that may wait for the thread at once; one more blocks until it takes some.
const QUEUE: usize = 256;

/// The handle callers embed through; dropping it (with the model) stops the thread.
#[derive(Debug)]
pub struct Batcher {
    requests: SyncSender<Request>,
}

struct Request {
    ids: Vec<Vec<u32>>,
    reply: mpsc::Sender<std::result::Result<Vec<Vec<f32>>, String>>,
}

impl Batcher {
    /// Starts the model's thread.
    pub fn start(model: Arc<Bert>) -> Result<Self> {
        let (requests, waiting) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("fleet-embed".into())
            .spawn(move || serve(&model, &waiting))
            .map_err(|e| Error::Embedding(format!("cannot start the embedding thread: {e}")))?;
        Ok(Self { requests })
    }

    /// One unit-length vector per text of `ids`, in order; blocks until the thread has run
    /// them.
    pub fn embed(&self, ids: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let stopped = || Error::Embedding("the embedding thread has stopped".into());
        let (reply, answer) = mpsc::channel();
        self.requests.send(Request { ids, reply }).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?.map_err(Error::Embedding)
    }
}

/// The thread: rounds of whatever is waiting, until every handle is gone.
fn serve(model: &Bert, waiting: &Receiver<Request>) {
    while let Ok(first) = waiting.recv() {
        let mut tokens = first.tokens();
        let mut round = vec![first];
        while tokens < TOKENS_PER_ROUND {
            match waiting.try_recv() {
                Ok(next) => {
                    tokens += next.tokens();
                    round.push(next);
                }
                Err(_) => break,
            }
        }
        let texts: Vec<&[u32]> =
            round.iter().flat_map(|r| r.ids.iter().map(Vec::as_slice)).collect();
        // A panic fails this round's callers, not the thread: later callers are served.
        let result = catch_unwind(AssertUnwindSafe(|| embed_packed(model, &texts)))
            .unwrap_or_else(|_| Err("the model panicked while embedding".into()));
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for request in round {
                    let mine = vectors.by_ref().take(request.ids.len()).collect();
                    // A caller that gave up has dropped its receiver; nothing to do.
                    let _ = request.reply.send(Ok(mine));
                }
            }
            Err(reason) => {
                for request in round {
                    let _ = request.reply.send(Err(reason.clone()));
                }
            }
        }
    }
}

impl Request {
    fn tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

/// Unit-length mean vectors of `texts`, in passes of at most [`TOKENS_PER_PASS`] tokens
/// (a longer text gets a pass of its own).
pub fn embed_packed(model: &Bert, texts: &[&[u32]]) -> std::result::Result<Vec<Vec<f32>>, String> {
    let h = model.config().hidden_size;
    let mut vectors = Vec::with_capacity(texts.len());
    let mut start = 0;
    while start < texts.len() {
        let (mut end, mut tokens) = (start, 0);
        while end < texts.len() && (end == start || tokens + texts[end].len() <= TOKENS_PER_PASS) {
            tokens += texts[end].len();
            end += 1;
        }
        let pass = &texts[start..end];
        let lens: Vec<usize> = pass.iter().map(|t| t.len()).collect();
        let pooled = model
            .forward_packed(pass, |hidden| pooling::mean_pool_packed(hidden, h, &lens))
            .and_then(|pooled| {
                pooled.ok_or_else(|| candle_core::Error::msg("packed passes run on the CPU only"))
            })
            .map_err(|e| crate::error::first_line(&e))?;
        vectors.extend(pooled);
        start = end;
    }
    Ok(vectors)
}
