//! What a search box typed into the inspector asks for: words, each of which a listed item
//! must match (all of them), compared without regard to ASCII case. A list says what a word
//! matches in it (`cluster::roster` for workers, the task table for tasks).

/// The most words a search may have, and the longest a word may be: a search is typed, and
/// each word costs a pass over every candidate.
pub const MAX_WORDS: usize = 8;
pub const MAX_WORD_BYTES: usize = 200;

/// A search, split into its words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Words(Vec<String>);

impl Words {
    /// The words of `text` (split on whitespace), or what to fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        if words.len() > MAX_WORDS {
            return Err(format!("a search has at most {MAX_WORDS} words, not {}", words.len()));
        }
        if let Some(long) = words.iter().find(|w| w.len() > MAX_WORD_BYTES) {
            return Err(format!(
                "a search word has at most {MAX_WORD_BYTES} bytes, not {} ({:?}…)",
                long.len(),
                long.chars().take(20).collect::<String>()
            ));
        }
        Ok(Self(words))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Whether `matches` says yes to every word.
    pub fn all(&self, mut matches: impl FnMut(&str) -> bool) -> bool {
        self.0.iter().all(|w| matches(w))
    }
}

/// Whether `needle` is in `haystack`, ASCII letters compared without case (a search for
/// `gpu` finds `GPU-host`). Allocates nothing: a search looks at thousands of texts.
/// The haystack may be a cut of a text (its bytes): a cut mid-character only loses that
/// character.
pub fn contains(haystack: impl AsRef<[u8]>, needle: &str) -> bool {
    let (h, n) = (haystack.as_ref(), needle.as_bytes());
    let Some(&first) = n.first() else { return true };
    if n.len() > h.len() {
        return false;
    }
    let first = first.to_ascii_lowercase();
    (0..=h.len() - n.len())
        .any(|i| h[i].to_ascii_lowercase() == first && h[i..i + n.len()].eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_anywhere_without_case_and_a_search_is_bounded() {
        assert!(contains("GPU-host-7", "gpu"));
        assert!(contains("a worker", "WORKER"));
        assert!(contains("anything", ""));
        assert!(!contains("gp", "gpu"));
        assert!(!contains("gpu-host", "host-8"));
        // Bytes past ASCII compare as they are, on any boundary.
        assert!(!contains("naïve café", "CAFÉ") && contains("naïve café", "café"));

        let words = Words::parse("  host:a   rack=2 ").expect("words");
        assert_eq!(words.iter().collect::<Vec<_>>(), ["host:a", "rack=2"]);
        assert!(words.all(|w| w.contains(['=', ':'])));
        assert!(!words.all(|w| w.contains('=')));
        assert!(Words::parse("").expect("empty").is_empty());
        assert!(Words::parse(&"w ".repeat(MAX_WORDS + 1)).is_err());
        assert!(Words::parse(&"w".repeat(MAX_WORD_BYTES + 1)).is_err());
    }
}
