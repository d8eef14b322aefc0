//! The KV cache of one sequence: per layer, its keys and values so far.

use candle_core::{Result, Tensor};

/// Keys and values `[kv_heads, len, head_dim]` per layer, and the number of positions held.
#[derive(Debug, Clone)]
pub struct SequenceCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl SequenceCache {
    pub fn new(layers: usize) -> Self {
        Self { layers: vec![None; layers], len: 0 }
    }

    /// Positions cached (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends this step's keys and values of `layer`; returns all of them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Records that a step added `n` positions (after every layer appended).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
