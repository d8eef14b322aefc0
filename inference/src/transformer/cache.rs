//! The KV cache of one sequence. On the CPU: per layer, its keys and values so far, in
//! buffers sized for the whole sequence up front so a decode step appends in place instead
//! of copying. On a GPU: its blocks of the decoder's shared pools ([`super::paged`]).

use candle_core::{Result, Tensor};

use super::paged::BlockTable;

/// Keys and values `[kv_heads, capacity, head_dim]` per layer (or the sequence's blocks of
/// the shared pools), and the positions held.
///
/// A sliding-window layer keeps a ring: position `p` in slot `p % slots`, with room for its
/// window plus the step's new tokens, so its memory stops growing once the sequence is
/// longer than its window (Gemma: five layers of six). Global layers' buffers hold every
/// position, slot `p` for position `p`, which is the same rule while they do not wrap.
#[derive(Debug)]
pub struct SequenceCache {
    layers: Vec<Option<Buffers>>,
    /// Each layer's window (positions a query sees, its own included), if it slides.
    windows: Vec<Option<usize>>,
    blocks: Option<BlockTable>,
    len: usize,
    capacity: usize,
}

/// One layer's keys and values `[kv_heads, slots, head_dim]`, and the first position they
/// still hold.
#[derive(Debug)]
pub(crate) struct Buffers {
    pub keys: Tensor,
    pub values: Tensor,
    pub from: usize,
}

impl SequenceCache {
    /// An empty cache with room for `capacity` positions (it grows if that is exceeded).
    pub fn new(layers: usize, capacity: usize) -> Self {
        Self::with_windows(vec![None; layers], capacity)
    }

    /// An empty cache whose layers with a window keep only it (and a step's tokens).
    pub fn with_windows(windows: Vec<Option<usize>>, capacity: usize) -> Self {
        let layers = (0..windows.len()).map(|_| None).collect();
        Self { layers, windows, blocks: None, len: 0, capacity: capacity.max(1) }
    }

    /// An empty cache whose positions live in blocks of shared pools.
    pub fn paged(blocks: BlockTable) -> Self {
        Self { layers: Vec::new(), windows: Vec::new(), blocks: Some(blocks), len: 0, capacity: 0 }
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

    /// Bytes of the buffers this cache holds now (0 for a paged cache: its blocks are the
    /// pools').
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.layers.iter().flatten().map(|b| size(&b.keys) + size(&b.values)).sum()
    }

    /// The window of `layer`, if it slides.
    fn window(&self, layer: usize) -> Option<usize> {
        self.windows.get(layer).copied().flatten()
    }

    /// Slots `layer` needs for `n` new positions after `len`: all of them, or for a window
    /// layer its window before the first new token and the new tokens.
    fn slots_needed(&self, layer: usize, n: usize) -> usize {
        match self.window(layer) {
            Some(w) => (self.len + n).min(w + n - 1),
            None => self.len + n,
        }
    }

    /// Writes this step's keys and values `[kv_heads, n, head_dim]` of `layer` after the
    /// cached positions. Returns views of every position so far, where they lie in order
    /// (not once a window layer's ring has wrapped: the CPU's attention reads the ring).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let n = k.dim(1)?;
        let at = self.len;
        self.write(layer, at, k, v, self.slots_needed(layer, n))?;
        let Some(b) = &self.layers[layer] else {
            candle_core::bail!("kv cache layer {layer} missing")
        };
        if b.from > 0 || b.keys.dim(1)? < at + n {
            return Ok(None);
        }
        Ok(Some((b.keys.narrow(1, 0, at + n)?, b.values.narrow(1, 0, at + n)?)))
    }

    /// Writes positions `at..at + n` of `layer` (`k`, `v` `[kv_heads, n, head_dim]`) into
    /// a buffer of at least `slots` slots, growing it (keeping what the layer still needs).
    fn write(
        &mut self,
        layer: usize,
        at: usize,
        k: &Tensor,
        v: &Tensor,
        slots: usize,
    ) -> Result<()> {
        let (heads, n, hd) = k.dims3()?;
        let window = self.window(layer);
        let len = self.len;
        let have = match &self.layers[layer] {
            Some(b) => b.keys.dim(1)?,
            None => 0,
        };
        if have < slots {
            let size = match window {
                None => {
                    let size = slots.max(self.capacity).max(2 * len);
                    self.capacity = size;
                    size
                }
                // Doubling as a short sequence grows, up to the window and the step.
                Some(w) => slots.max(self.capacity.max(2 * len).min(w + n - 1)),
            };
            let keys = Tensor::zeros((heads, size, hd), k.dtype(), k.device())?;
            let values = Tensor::zeros((heads, size, hd), v.dtype(), v.device())?;
            // A window layer's future tokens need only its last window - 1 positions.
            let keep = match window {
                Some(w) => len.saturating_sub(w - 1),
                None => 0,
            };
            let mut from = keep;
            if let Some(old) = self.layers[layer].take() {
                from = keep.max(old.from);
                for (src, dst, _, run) in runs(from, len, have, size) {
                    keys.slice_set(&old.keys.narrow(1, src, run)?.contiguous()?, 1, dst)?;
                    values.slice_set(&old.values.narrow(1, src, run)?.contiguous()?, 1, dst)?;
                }
            }
            self.layers[layer] = Some(Buffers { keys, values, from: from.min(at) });
        }
        let Some(b) = &mut self.layers[layer] else {
            candle_core::bail!("kv cache layer {layer} missing")
        };
        let size = b.keys.dim(1)?;
        for (_, dst, p, run) in runs(at, at + n, size, size) {
            let offset = p - at;
            b.keys.slice_set(&k.narrow(1, offset, run)?.contiguous()?, 1, dst)?;
            b.values.slice_set(&v.narrow(1, offset, run)?.contiguous()?, 1, dst)?;
        }
        // Positions the new ones overwrote are gone.
        b.from = b.from.max((at + n).saturating_sub(size));
        Ok(())
    }

    /// The buffers of `layer`, once written.
    pub(crate) fn buffers(&self, layer: usize) -> Option<&Buffers> {
        self.layers.get(layer)?.as_ref()
    }

    /// A copy of positions `start..start + n` of every layer; `None` for a paged cache (the
    /// GPU's pools do not take part in the prefix cache yet), positions not all cached, or
    /// positions a window layer no longer holds.
    pub fn export(&self, start: usize, n: usize) -> Result<Option<KvSpan>> {
        if self.blocks.is_some() || start + n > self.len {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for slot in &self.layers {
            let Some(b) = slot else { return Ok(None) };
            if start < b.from {
                return Ok(None);
            }
            let size = b.keys.dim(1)?;
            let span = |t: &Tensor| -> Result<Tensor> {
                let parts = runs(start, start + n, size, size)
                    .into_iter()
                    .map(|(src, _, _, run)| t.narrow(1, src, run))
                    .collect::<Result<Vec<_>>>()?;
                owned(&Tensor::cat(&parts, 1)?)
            };
            layers.push((span(&b.keys)?, span(&b.values)?));
        }
        Ok(Some(KvSpan { layers, len: n }))
    }

    /// Appends `spans` after the cached positions, as if a step had computed them: a
    /// sequence's keys and values do not depend on what else was in its steps, so these are
    /// the ones it would compute. A window layer takes only the positions later tokens see.
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
            let (k, v) = (part(false)?, part(true)?);
            let skip = match self.window(layer) {
                Some(w) => n.saturating_sub(w - 1),
                None => 0,
            };
            let (k, v) = (k.narrow(1, skip, n - skip)?, v.narrow(1, skip, n - skip)?);
            let at = self.len + skip;
            let slots = match self.window(layer) {
                Some(w) => (self.len + n).min(w - 1).max(n - skip).max(1),
                None => self.len + n,
            };
            self.write(layer, at, &k, &v, slots)?;
            // The positions skipped were never written.
            if let Some(b) = &mut self.layers[layer]
                && skip > 0
            {
                b.from = b.from.max(at);
            }
        }
        self.advance(n);
        Ok(())
    }

    /// Records that a step added `n` positions (after every layer appended).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// Positions `from..to` in a ring of `src_slots` slots copied to one of `dst_slots`: the
/// contiguous runs `(source slot, destination slot, first position, length)`.
fn runs(
    from: usize,
    to: usize,
    src_slots: usize,
    dst_slots: usize,
) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::new();
    let mut p = from;
    while p < to {
        let (s, d) = (p % src_slots, p % dst_slots);
        let run = (to - p).min(src_slots - s).min(dst_slots - d);
        out.push((s, d, p, run));
        p += run;
    }
    out
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
