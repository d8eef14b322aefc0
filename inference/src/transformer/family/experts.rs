//! The mixture of experts a GGUF file's metadata describes, with llama.cpp's rules per family.

use super::Family;
use crate::transformer::config::Experts;
use crate::transformer::metadata::Metadata;

/// The experts of a file whose `expert_count` is above 0: Qwen2-MoE keeps the softmax's top-k
/// weights and adds a shared expert; Qwen3-MoE, gpt-oss and Mixtral-style Llama files
/// renormalize them. `None` for a dense file of a family that may have experts.
pub(super) fn read(family: Family, m: Metadata<'_>) -> Result<Option<Experts>, String> {
    let count = m.optional_int("expert_count")?.unwrap_or(0);
    let moe = matches!(family, Family::Qwen3Moe | Family::Qwen2Moe | Family::GptOss);
    if count == 0 {
        if moe {
            return Err(format!("a {} file needs {} above 0", m.arch, m.key("expert_count")));
        }
        return Ok(None);
    }
    if !moe && family != Family::Llama {
        return Err(format!("{} models with experts are not supported (llama's are)", m.arch));
    }
    let used = m.int("expert_used_count")?;
    if used == 0 || used > count {
        return Err(format!("{} is {used}; it must be 1 to {count}", m.key("expert_used_count")));
    }
    let ff = match m.optional_int("expert_feed_forward_length")? {
        Some(ff) => ff,
        None => m.int("feed_forward_length")?,
    };
    let shared_ff = match family {
        Family::Qwen2Moe => Some(m.int("expert_shared_feed_forward_length")?),
        _ => None,
    };
    // gpt-oss softmaxes its top-k logits: the same as renormalizing the full softmax's.
    let renormalize = family != Family::Qwen2Moe;
    let biases = family == Family::GptOss;
    Ok(Some(Experts { count, used, ff, renormalize, shared_ff, biases }))
}
