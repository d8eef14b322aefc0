//! Weights held as 4-bit codes into a table of sixteen int8 values: IQ4_NL's and IQ4_XS's
//! table, and MXFP4's (its E2M1 values doubled). A block is its scale times the values its
//! codes pick, so it multiplies as signed int8 values (Q8_0's kernels) once the codes are
//! looked up; the lookup is one `pshufb` per block in registers ([`super::avx2`]), and the
//! weights stay at 4.5 bits each where Q8_0 takes 8.5: single-stream decode, which streams
//! the weights, reads half the bytes.
//!
//! These types reach the kernels as Q8_0 (candle's `QTensor` has no such types, so the GGUF
//! reader transcodes them exactly): [`encode`] finds the table a matrix's values all come
//! from and holds the codes. That is lossless: the values looked up are the values given, so
//! every output is bit for bit what the Q8_0 blocks gave.

use std::marker::PhantomData;

use super::act::QK;
use super::q8::{Block, Nibbles, Signed, Unsigned};

/// Sixteen int8 values that a block's 4-bit codes index.
pub(crate) trait Codebook: Copy + 'static {
    const VALUES: [i8; 16];
}

/// llama.cpp's `kvalues_iq4nl`, the table of IQ4_NL and IQ4_XS.
pub const IQ4_NL: [i8; 16] =
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// llama.cpp's `kvalues_mxfp4`: MXFP4's E2M1 values times two, by 4-bit code.
pub const MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// IQ4_NL's and IQ4_XS's table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Iq4;

impl Codebook for Iq4 {
    const VALUES: [i8; 16] = IQ4_NL;
}

/// MXFP4's table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fp4;

impl Codebook for Fp4 {
    const VALUES: [i8; 16] = MXFP4;
}

/// One block's codes into `C`'s table, laid out as [`Nibbles`] (value `j` in the low nibble
/// of byte `j`, value `j + 16` in its high nibble).
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(crate) struct Coded<C>(pub Nibbles, PhantomData<C>);

impl<C: Codebook> Signed for Coded<C> {
    const PACKED: bool = true;

    #[inline(always)]
    fn values(&self) -> Block {
        self.0.bytes().map(|c| C::VALUES[usize::from(c & 0x0F)])
    }
}

/// `blocks` as codes into `C`'s table, if every value is one of the table's.
pub(crate) fn encode<C: Codebook>(blocks: &[Block]) -> Option<Vec<Coded<C>>> {
    // The code of each int8 value (as u8), or none.
    let mut code = [None; 256];
    for (c, &v) in C::VALUES.iter().enumerate().rev() {
        code[usize::from(v as u8)] = Some(c as u8);
    }
    let code_of = |v: i8| code[usize::from(v as u8)];
    let half = QK / 2;
    blocks
        .iter()
        .map(|b| {
            let mut nibbles = [0u8; QK / 2];
            for (j, n) in nibbles.iter_mut().enumerate() {
                *n = code_of(b[j])? | code_of(b[j + half])? << 4;
            }
            Some(Coded(nibbles, PhantomData))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_look_up_the_values_they_were_made_from() {
        let block: Block = std::array::from_fn(|j| MXFP4[(j * 7) % 16]);
        let coded = encode::<Fp4>(&[block]).expect("every value is MXFP4's");
        assert_eq!(coded[0].values(), block);
        // One value outside the table and the whole matrix is not coded.
        let mut other = block;
        other[31] = 5;
        assert!(encode::<Fp4>(&[block, other]).is_none());
        let iq4: Block = std::array::from_fn(|j| IQ4_NL[15 - j % 16]);
        assert_eq!(encode::<Iq4>(&[iq4]).expect("IQ4 values")[0].values(), iq4);
        assert!(encode::<Fp4>(&[iq4]).is_none());
    }
}
