//! The KV cache of one sequence. On the CPU: per layer, its keys and values so far, in
//! buffers sized for the whole sequence up front so a decode step appends in place instead
//! of copying. On a GPU: its blocks of the decoder's shared pools ([`super::paged`]).

use candle_core::{Result, Tensor};

use super::paged::BlockTable;

/// Keys and values `[kv_heads, capacity, head_dim]` per layer (or the sequence's blocks of
/// the shared pools), and the positions held.
#[derive(Debug)]
pub struct SequenceCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    blocks: Option<BlockTable>,
    len: usize,
    capacity: usize,
}

impl SequenceCache {
    /// An empty cache with room for `capacity` positions (it grows if that is exceeded).
    pub fn new(layers: usize, capacity: usize) -> Self {
        Self { layers: vec![None; layers], blocks: None, len: 0, capacity: capacity.max(1) }
    }

    /// An empty cache whose positions live in blocks of shared pools.
    pub fn paged(blocks: BlockTable) -> Self {
        Self { layers: Vec::new(), blocks: Some(blocks), len: 0, capacity: 0 }
    }

    /// The sequence's blocks, when its cache is paged.
    pub fn blocks(&self) -> Option<&BlockTable> {
        self.blocks.as_ref()
    }

    pub(crate) fn blocks_mut(&mut self) -> Option<&mut BlockTable> {
        self.blocks.as_mut()
    }

    /// Positions cached (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes this step's keys and values `[kv_heads, n, head_dim]` of `layer` after the
    /// cached positions; returns views of all of them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (heads, n, hd) = k.dims3()?;
        let needed = self.len + n;
        let slot = &mut self.layers[layer];
        let grow = match slot {
            None => true,
            Some((keys, _)) => keys.dim(1)? < needed,
        };
        if grow {
            let capacity = needed.max(self.capacity).max(2 * self.len);
            self.capacity = capacity;
            let keys = Tensor::zeros((heads, capacity, hd), k.dtype(), k.device())?;
            let values = Tensor::zeros((heads, capacity, hd), v.dtype(), v.device())?;
            if let Some((old_k, old_v)) = slot.take() {
                keys.slice_set(&old_k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                values.slice_set(&old_v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
            *slot = Some((keys, values));
        }
        let Some((keys, values)) = slot.as_ref() else {
            candle_core::bail!("kv cache layer {layer} missing")
        };
        keys.slice_set(k, 1, self.len)?;
        values.slice_set(v, 1, self.len)?;
        Ok((keys.narrow(1, 0, needed)?, values.narrow(1, 0, needed)?))
    }

    /// The buffers `[kv_heads, capacity, head_dim]` of `layer`, once written.
    pub(crate) fn buffers(&self, layer: usize) -> Option<&(Tensor, Tensor)> {
        self.layers.get(layer)?.as_ref()
    }

    /// A copy of positions `start..start + n` of every layer; `None` for a paged cache (the
    /// GPU's pools do not take part in the prefix cache yet) or positions not all cached.
    pub fn export(&self, start: usize, n: usize) -> Result<Option<KvSpan>> {
        if self.blocks.is_some() || start + n > self.len {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for slot in &self.layers {
            let Some((keys, values)) = slot else { return Ok(None) };
            layers.push((owned(&keys.narrow(1, start, n)?)?, owned(&values.narrow(1, start, n)?)?));
        }
        Ok(Some(KvSpan { layers, len: n }))
    }

    /// Appends `spans` after the cached positions, as if a step had computed them: a
    /// sequence's keys and values do not depend on what else was in its steps, so these are
    /// the ones it would compute.
    pub fn import(&mut self, spans: &[&KvSpan]) -> Result<()> {
        if self.blocks.is_some() {
            candle_core::bail!("a paged cache cannot take cached positions");
        }
        let n: usize = spans.iter().map(|s| s.len).sum();
        if n == 0 {
            return Ok(());
        }
        for layer in 0..self.layers.len() {
            let part = |value: bool| -> Result<Tensor> {
                let parts = spans
                    .iter()
                    .map(|s| match s.layers.get(layer) {
                        Some((k, v)) => Ok(if value { v } else { k }),
                        None => Err(candle_core::Error::Msg(format!(
                            "cached block lacks layer {layer}"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)
            };
            self.append(layer, &part(false)?, &part(true)?)?;
        }
        self.advance(n);
        Ok(())
    }

    /// Records that a step added `n` positions (after every layer appended).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// Keys and values `[kv_heads, n, head_dim]` of `n` consecutive positions of a sequence, per
/// layer, in storage of their own: what the prefix cache keeps of a block.
#[derive(Debug)]
pub struct KvSpan {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl KvSpan {
    /// Keys and values `[kv_heads, len, head_dim]` per layer.
    pub fn new(layers: Vec<(Tensor, Tensor)>, len: usize) -> Self {
        Self { layers, len }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A copy of `view` in storage of its own (`contiguous` would share the storage of a view
/// that is already contiguous, keeping a sequence's whole buffer alive).
fn owned(view: &Tensor) -> Result<Tensor> {
    let out = Tensor::zeros(view.dims(), view.dtype(), view.device())?;
    out.slice_set(&view.contiguous()?, 0, 0)?;
    Ok(out)
}
