//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p,
//! repetition, presence and frequency penalties, reproducible with a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens. The default is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (always the most likely token).
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// Drops tokens less likely than `min_p` times the most likely one.
    pub min_p: Option<f32>,
    /// Above 1 discourages every token seen so far (prompt and output), HF-style.
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token already generated, OpenAI-style.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated, OpenAI-style.
    pub frequency_penalty: f32,
    /// Makes sampling reproducible.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks the ranges; the error says which setting is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.temperature;
        if !(t.is_finite() && (0.0..=2.0).contains(&t)) {
            return Err(format!("temperature must be between 0 and 2, got {t}"));
        }
        if self.top_k == Some(0) {
            return Err("top_k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("top_p must be in (0, 1], got {p}"));
        }
        if let Some(p) = self.min_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(format!("min_p must be in [0, 1], got {p}"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!(
                "repetition_penalty must be above 0, got {}",
                self.repetition_penalty
            ));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(value.is_finite() && (-2.0..=2.0).contains(&value)) {
                return Err(format!("{name} must be between -2 and 2, got {value}"));
            }
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }
}

/// Picks tokens for one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// The next token given `logits` over the vocabulary, the tokens seen so far (`seen`:
    /// prompt and output) and those generated (`generated`).
    pub fn sample(&mut self, logits: &[f32], seen: &[u32], generated: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            // OpenAI's formula: logit - presence * [count > 0] - frequency * count.
            let mut counted = generated.to_vec();
            counted.sort_unstable();
            for run in counted.chunk_by(|a, b| a == b) {
                if let Some(l) = logits.get_mut(run[0] as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * run.len() as f32;
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(&logits);
        }
        // Candidates by descending logit, cut by top-k, then softmax with temperature.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if let Some(k) = p.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<f32> =
            order.iter().map(|&t| ((logits[t as usize] - max) / p.temperature).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if let Some(min_p) = p.min_p {
            let floor = min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        if let Some(top_p) = p.top_p {
            let mut cumulative = 0.0;
            let n = probs
                .iter()
                .take_while(|&&x| {
                    let before = cumulative;
                    cumulative += x;
                    before < top_p
                })
                .count();
            keep = keep.min(n.max(1));
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            if r < x {
                return order[i];
            }
            r -= x;
        }
        order[keep - 1]
    }
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Log-softmax of `logits` at `token`, plus the `top` most likely tokens with theirs.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> crate::engine::TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let at = |t: u32| logits.get(t as usize).map_or(f32::NEG_INFINITY, |l| l - log_sum);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(order.len());
    if top > 0 {
        order.select_nth_unstable_by(top - 1, |a, b| at(*b).total_cmp(&at(*a)));
    }
    order.truncate(top);
    order.sort_by(|a, b| at(*b).total_cmp(&at(*a)));
    let top = order.into_iter().map(|t| (t, at(t))).collect();
    crate::engine::TokenLogprobs { token, logprob: at(token), top }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams { seed: Some(7), ..Default::default() };
        f(&mut p);
        p
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.5, -1.0, 0.0];

    #[test]
    fn greedy_takes_the_most_likely_token() {
        assert_eq!(Sampler::new(SamplingParams::default()).sample(&LOGITS, &[], &[]), 1);
    }

    #[test]
    fn a_seed_makes_sampling_reproducible() {
        let run = |seed| {
            let mut s = Sampler::new(params(|p| {
                p.temperature = 1.5;
                p.seed = Some(seed);
            }));
            (0..50).map(|_| s.sample(&LOGITS, &[], &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn temperature_one_follows_the_softmax() {
        let mut s = Sampler::new(params(|p| p.temperature = 1.0));
        let logits = [0.0, 3f32.ln()];
        let ones = (0..20_000).filter(|_| s.sample(&logits, &[], &[]) == 1).count();
        let share = ones as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let draws = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            let mut seen: Vec<u32> = (0..2000).map(|_| s.sample(&LOGITS, &[], &[])).collect();
            seen.sort_unstable();
            seen.dedup();
            seen
        };
        assert_eq!(
            draws(params(|p| {
                p.temperature = 2.0;
                p.top_k = Some(1)
            })),
            [1]
        );
        assert_eq!(
            draws(params(|p| {
                p.temperature = 2.0;
                p.top_k = Some(2)
            })),
            [1, 2]
        );
        assert_eq!(
            draws(params(|p| {
                p.temperature = 1.0;
                p.top_p = Some(0.01)
            })),
            [1]
        );
        // exp(2.5 - 3) = 0.61 of the top, exp(1 - 3) = 0.14: min_p 0.5 keeps two.
        assert_eq!(
            draws(params(|p| {
                p.temperature = 1.0;
                p.min_p = Some(0.5)
            })),
            [1, 2]
        );
        assert_eq!(draws(params(|p| p.temperature = 2.0)), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn penalties_discourage_repeats() {
        let mut rep = Sampler::new(params(|p| p.repetition_penalty = 2.0));
        assert_eq!(rep.sample(&LOGITS, &[1], &[]), 2);
        let mut presence = Sampler::new(params(|p| p.presence_penalty = 1.0));
        assert_eq!(presence.sample(&LOGITS, &[1], &[1]), 2);
        assert_eq!(presence.sample(&LOGITS, &[1], &[]), 1, "presence counts generated tokens only");
        // Token 1 leads token 2 by 0.5: one occurrence at 0.4 keeps it ahead, two do not.
        let mut frequency = Sampler::new(params(|p| p.frequency_penalty = 0.4));
        assert_eq!(frequency.sample(&LOGITS, &[1], &[1]), 1);
        assert_eq!(frequency.sample(&LOGITS, &[1, 1], &[1, 1]), 2, "frequency counts each time");
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(
            params(|p| p.temperature = -1.0).validate().is_err_and(|e| e.contains("temperature"))
        );
        assert!(params(|p| p.top_p = Some(0.0)).validate().is_err_and(|e| e.contains("top_p")));
        assert!(params(|p| p.top_k = Some(0)).validate().is_err_and(|e| e.contains("top_k")));
        assert!(
            params(|p| p.frequency_penalty = 2.5)
                .validate()
                .is_err_and(|e| e.contains("frequency_penalty"))
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
