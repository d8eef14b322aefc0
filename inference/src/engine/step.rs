//! One step's computation: the forward pass over what the sequences feed, the allowed tokens
//! of constrained ones computed beside it, and each producing sequence's next token.

use candle_core::Tensor;
use fleet_grammar::{Constraint, Mask};

use super::scheduler::Active;
use super::{BatchedModel, TokenLogprobs};
use crate::transformer::{SequenceCache, StepInput};

/// A sequence (by index among the active ones) and the tokens it feeds this step.
pub(super) type Feed = (usize, Vec<u32>);

/// Runs one forward pass over the fed sequences. Meanwhile, on a thread of its own, the
/// constrained sequences that produce a token this step compute which tokens their format
/// allows (`masks`, by index into `active`).
pub(super) fn step(
    model: &impl BatchedModel,
    feeds: &[Feed],
    active: &mut [Active],
) -> (candle_core::Result<Tensor>, Vec<Option<Result<Mask, String>>>) {
    let producing: Vec<bool> = feeds
        .iter()
        .map(|(i, tokens)| active[*i].fed + tokens.len() >= active[*i].request.prompt.len())
        .collect();
    let mut caches: Vec<Option<&mut SequenceCache>> = Vec::with_capacity(active.len());
    let mut constraints: Vec<Option<&mut Constraint>> = Vec::with_capacity(active.len());
    for a in active.iter_mut() {
        caches.push(Some(&mut a.cache));
        constraints.push(a.constraint.as_mut());
    }
    let wanted: Vec<(usize, &mut Constraint)> = feeds
        .iter()
        .zip(&producing)
        .filter(|(_, producing)| **producing)
        .filter_map(|((i, _), _)| constraints[*i].take().map(|c| (*i, c)))
        .collect();
    let mut inputs: Vec<StepInput<'_>> = Vec::with_capacity(feeds.len());
    for (i, tokens) in feeds {
        if let Some(cache) = caches[*i].take() {
            inputs.push(StepInput { tokens, cache });
        }
    }
    let mut masks: Vec<Option<Result<Mask, String>>> = (0..caches.len()).map(|_| None).collect();
    if wanted.is_empty() {
        return (model.step(&mut inputs), masks);
    }
    let indices: Vec<usize> = wanted.iter().map(|(i, _)| *i).collect();
    let mut computed = Vec::new();
    let logits = std::thread::scope(|scope| {
        let masking =
            // `None`: nothing masked now (inside a thinking model's reasoning).
            scope.spawn(move || {
                let masks = wanted.into_iter().map(|(i, c)| (i, c.mask().transpose()));
                masks.collect::<Vec<_>>()
            });
        let logits = model.step(&mut inputs);
        // A panic there (guarded against) must not let those sequences run unconstrained.
        computed = masking.join().unwrap_or_else(|_| {
            indices
                .iter()
                .map(|&i| (i, Some(Err("computing the allowed tokens failed".into()))))
                .collect()
        });
        logits
    });
    for (i, mask) in computed {
        masks[i] = mask;
    }
    (logits, masks)
}

/// A chosen token and, when asked for, its logprobs; or why none could be chosen.
pub(super) type Chosen = Option<Result<(u32, Option<TokenLogprobs>), String>>;

/// The next token of every fed sequence that has now seen its whole prompt (`None` for
/// those still prefilling). Advances `fed`. Only sequences that produce a token draw from
/// their sampler, so batching never changes what a seeded sequence samples.
pub(super) fn choose(
    logits: &Tensor,
    feeds: &[Feed],
    masks: &[Option<Result<Mask, String>>],
    active: &mut [Active],
) -> candle_core::Result<Vec<Chosen>> {
    let greedy = feeds.iter().all(|(i, _)| active[*i].request.sampling.is_greedy());
    let rows: Option<Vec<Vec<f32>>> = if greedy { None } else { Some(logits.to_vec2::<f32>()?) };
    let argmax = if greedy { crate::transformer::greedy(logits)? } else { Vec::new() };
    let mut next = Vec::with_capacity(feeds.len());
    for (row, (i, tokens)) in feeds.iter().enumerate() {
        let a = &mut active[*i];
        if a.fed < a.request.prompt.len() {
            a.fed += tokens.len();
            if a.fed < a.request.prompt.len() {
                next.push(None);
                continue;
            }
        }
        let generated = &a.seen[a.request.prompt.len()..];
        let token = match (&masks[*i], &rows) {
            (Some(Err(e)), _) => {
                next.push(Some(Err(format!("the output format cannot be followed: {e}"))));
                continue;
            }
            (Some(Ok(mask)), _) => {
                let mut values = match &rows {
                    Some(rows) => rows[row].clone(),
                    None => logits.get(row)?.to_vec1::<f32>()?,
                };
                mask.apply(&mut values);
                a.sampler.sample(&values, &a.seen, generated)
            }
            (None, None) => argmax[row],
            (None, Some(rows)) => a.sampler.sample(&rows[row], &a.seen, generated),
        };
        let logprobs = match a.request.logprobs {
            None => None,
            Some(top) => {
                let owned;
                let values = match &rows {
                    Some(rows) => &rows[row],
                    None => {
                        owned = logits.get(row)?.to_vec1::<f32>()?;
                        &owned
                    }
                };
                Some(crate::sampling::logprobs(values, token, top))
            }
        };
        next.push(Some(Ok((token, logprobs))));
    }
    Ok(next)
}
