//! [`StopMatcher`]: stop strings over a stream of text deltas.
//!
//! A stop string may arrive split over several deltas, so any tail that could still grow into
//! one is held back until it either completes (stop: the text before it is emitted, the stop
//! string never is) or can no longer match (it is emitted).

/// Stop-string state for one sequence.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self { stops, held: String::new(), stopped: false }
    }

    /// Feeds one delta; returns the text that is now safe to emit and whether a stop string
    /// was found. After a stop every later call returns `("", true)`.
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(delta);
        // The earliest match wins: everything before it is text the model meant to say.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return (text, true);
        }
        let keep = self.partial_suffix_len();
        let tail = self.held.split_off(self.held.len() - keep);
        (std::mem::replace(&mut self.held, tail), false)
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The held-back text, for when the generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest tail of `held` that is a proper prefix of a stop string.
    /// Such a tail always starts on a character boundary: it equals the start of a `str`.
    fn partial_suffix_len(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(self.held.len());
            for len in (longest + 1..=max).rev() {
                if stop.is_char_boundary(len) && self.held.ends_with(&stop[..len]) {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}
