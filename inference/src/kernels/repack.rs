//! Projections stacked into one matrix, and Q4_0 and Q5_0 blocks rewritten as Q8_0 blocks
//! with the same scale and the same integer values (4- and 5-bit values fit in int8) where a
//! stack mixes them with Q8_0 (Q4_K_M files hold Q5_0 and Q8_0 projections side by side when
//! the hidden size is not a multiple of 256).

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QTensor, ggml_file};

use crate::{Error, Result};

const QK: usize = 32;

/// The Q8_0 twin of a Q4_0 or Q5_0 tensor; other dtypes are an `UnsupportedWeights`.
pub fn to_q8_0(qt: &QTensor) -> Result<QTensor> {
    let unsupported = |why: String| Error::UnsupportedWeights(why);
    let block_bytes = match qt.dtype() {
        GgmlDType::Q4_0 => 2 + QK / 2,
        GgmlDType::Q5_0 => 2 + 4 + QK / 2,
        other => return Err(unsupported(format!("no Q8_0 repack of {other:?}"))),
    };
    let data: Cow<'_, [u8]> = qt.data().map_err(|e| unsupported(format!("reading blocks: {e}")))?;
    if !data.len().is_multiple_of(block_bytes) {
        return Err(unsupported(format!("{} bytes is not whole blocks", data.len())));
    }
    let mut out = Vec::with_capacity(data.len() / block_bytes * (2 + QK));
    for block in data.chunks_exact(block_bytes) {
        // The f16 scale is kept bit for bit.
        out.extend_from_slice(&block[..2]);
        let mut values = [0i8; QK];
        if qt.dtype() == GgmlDType::Q4_0 {
            let qs = &block[2..];
            for j in 0..QK / 2 {
                values[j] = (qs[j] & 0x0F) as i8 - 8;
                values[j + QK / 2] = (qs[j] >> 4) as i8 - 8;
            }
        } else {
            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            let qs = &block[6..];
            for j in 0..QK / 2 {
                let high_0 = ((qh >> j) << 4) as u8 & 0x10;
                let high_1 = (qh >> (j + 12)) as u8 & 0x10;
                values[j] = ((qs[j] & 0x0F) | high_0) as i8 - 16;
                values[j + QK / 2] = ((qs[j] >> 4) | high_1) as i8 - 16;
            }
        }
        out.extend(values.iter().map(|v| *v as u8));
    }
    ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &out, qt.shape().dims().to_vec(), &qt.device())
        .map_err(|e| unsupported(format!("building the Q8_0 tensor: {e}")))
}

/// Several matrices of the same input size stacked into one (rows in order), so
/// projections of one input run as one matmul: as they are when all have the same
/// [`super::SUPPORTED`] dtype, else as Q8_0 when each is Q8_0, Q4_0 or Q5_0. `None` when they
/// cannot be (another dtype, another input size, not on the CPU).
pub fn stack(tensors: &[QTensor]) -> Result<Option<QTensor>> {
    let Some(first) = tensors.first() else { return Ok(None) };
    let device = first.device();
    let &[_, k] = first.shape().dims() else { return Ok(None) };
    let same = tensors.iter().all(|t| t.dtype() == first.dtype());
    let dtype = if same && super::SUPPORTED.contains(&first.dtype()) {
        first.dtype()
    } else {
        GgmlDType::Q8_0
    };
    let mut bytes = Vec::new();
    let mut rows = 0;
    for t in tensors {
        let &[n, tk] = t.shape().dims() else { return Ok(None) };
        if tk != k || !t.device().is_cpu() {
            return Ok(None);
        }
        let repacked;
        let t = match t.dtype() {
            d if d == dtype => t,
            GgmlDType::Q4_0 | GgmlDType::Q5_0 => {
                repacked = to_q8_0(t)?;
                &repacked
            }
            _ => return Ok(None),
        };
        let data =
            t.data().map_err(|e| Error::UnsupportedWeights(format!("reading blocks: {e}")))?;
        bytes.extend_from_slice(&data);
        rows += n;
    }
    ggml_file::qtensor_from_ggml(dtype, &bytes, vec![rows, k], &device)
        .map(Some)
        .map_err(|e| Error::UnsupportedWeights(format!("stacking {dtype:?} matrices: {e}")))
}
