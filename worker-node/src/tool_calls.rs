//! Tool calls written as text by local models, found in their streamed output.
//!
//! Two formats cover the families the engine runs: Qwen2/2.5/3 (and Hermes-style models)
//! wrap each call in `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; Llama 3.x
//! answers with a bare JSON object `{"name": ..., "parameters": {...}}` (optionally after
//! `<|python_tag|>`). The parser passes text through as it streams, holding back only
//! what may turn out to be a call, so users never see call markup.

use fleet_inference::ToolCall;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// Splits a stream of text deltas into visible text and tool calls.
#[derive(Debug, Default)]
pub struct ToolCallParser {
    buf: String,
    in_call: bool,
    /// Visible text was shown already (a bare-JSON call must be the whole answer).
    shown: bool,
    calls: Vec<ToolCall>,
}

impl ToolCallParser {
    /// Takes a delta; returns the text that can be shown now.
    pub fn push(&mut self, delta: &str) -> String {
        self.buf.push_str(delta);
        let mut out = String::new();
        loop {
            if self.in_call {
                let Some(end) = self.buf.find(CLOSE) else { break };
                let body: String = self.buf.drain(..end + CLOSE.len()).collect();
                let body = &body[..end];
                match parse_call(body, self.calls.len()) {
                    Some(call) => self.calls.push(call),
                    None => out.push_str(&format!("{OPEN}{body}{CLOSE}")),
                }
                self.in_call = false;
                continue;
            }
            if !self.shown && looks_like_bare_call(&self.buf) {
                // Held until the end: only then is it known whether it is one JSON call.
                break;
            }
            if let Some(start) = self.buf.find(OPEN) {
                out.extend(self.buf.drain(..start));
                self.buf.drain(..OPEN.len());
                self.in_call = true;
                continue;
            }
            // Keep a tail that could be the start of `<tool_call>`.
            let keep = partial_suffix(&self.buf, OPEN);
            let show = self.buf.len() - keep;
            out.extend(self.buf.drain(..show));
            break;
        }
        if !out.trim().is_empty() {
            self.shown = true;
        }
        out
    }

    /// Ends the stream: the text still held back (when it was no call after all) and the
    /// calls found.
    pub fn finish(mut self) -> (String, Vec<ToolCall>) {
        let rest = std::mem::take(&mut self.buf);
        if self.in_call {
            // A model may end with its end token right after the call's JSON.
            match parse_call(&rest, self.calls.len()) {
                Some(call) => self.calls.push(call),
                None => return (format!("{OPEN}{rest}"), self.calls),
            }
            return (String::new(), self.calls);
        }
        if !self.shown && looks_like_bare_call(&rest) {
            let json = rest.trim_start().trim_start_matches(PYTHON_TAG);
            if let Some(call) = parse_call(json, self.calls.len()) {
                self.calls.push(call);
                return (String::new(), self.calls);
            }
        }
        (rest, self.calls)
    }
}

fn looks_like_bare_call(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') || t.starts_with(PYTHON_TAG) || (!t.is_empty() && PYTHON_TAG.starts_with(t))
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// `{"name": ..., "arguments"|"parameters": ...}` as a call with a fresh id.
fn parse_call(json: &str, index: usize) -> Option<ToolCall> {
    let value: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_owned();
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "{}".to_owned(),
    };
    Some(ToolCall { id: format!("call_{index}"), name, arguments })
}

/// An agent of the cluster as a tool its caller's model sees: a function taking the request
/// for that agent as `input`.
pub fn agent_definition(name: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "function",
        "function": {
            "name": name,
            "description": format!("Ask the agent {name} to do something; it answers in text."),
            "parameters": {
                "type": "object",
                "properties": {
                    "input": { "type": "string", "description": format!("What to ask {name}.") }
                },
                "required": ["input"]
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(deltas: &[&str]) -> (String, Vec<ToolCall>) {
        let mut parser = ToolCallParser::default();
        let mut shown: String = deltas.iter().map(|d| parser.push(d)).collect();
        let (rest, calls) = parser.finish();
        shown.push_str(&rest);
        (shown, calls)
    }

    #[test]
    fn text_without_calls_passes_through_unchanged() {
        let (text, calls) = run(&["Hello", " <to", "day> is", " fine <", "b>"]);
        assert_eq!(text, "Hello <today> is fine <b>");
        assert!(calls.is_empty());
    }

    #[test]
    fn hermes_calls_split_across_deltas_are_found_and_hidden() {
        let (text, calls) = run(&[
            "Let me ask. <tool",
            "_call>\n{\"name\": \"researcher\", \"argu",
            "ments\": {\"input\": \"find x\"}}\n</tool_call>",
            "<tool_call>{\"name\": \"b\", \"arguments\": {}}",
        ]);
        assert_eq!(text, "Let me ask. ");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "researcher");
        assert_eq!(calls[0].arguments, r#"{"input":"find x"}"#);
        assert_eq!((calls[1].name.as_str(), calls[1].id.as_str()), ("b", "call_1"));
    }

    #[test]
    fn llama_bare_json_calls_are_found_and_other_json_is_text() {
        let (text, calls) =
            run(&["<|python_tag|>{\"name\": \"b\", ", "\"parameters\": {\"input\": \"hi\"}}"]);
        assert_eq!(text, "");
        assert_eq!(calls[0].arguments, r#"{"input":"hi"}"#);
        let (text, calls) = run(&["{\"answer\": ", "42}"]);
        assert_eq!(text, "{\"answer\": 42}");
        assert!(calls.is_empty());
    }

    #[test]
    fn a_malformed_call_is_shown_as_text() {
        let (text, calls) = run(&["<tool_call>not json</tool_call> ok"]);
        assert_eq!(text, "<tool_call>not json</tool_call> ok");
        assert!(calls.is_empty());
    }

    #[test]
    fn multibyte_text_near_a_partial_marker_is_kept_whole() {
        let (text, _) = run(&["héllo wörld <", "tööl"]);
        assert_eq!(text, "héllo wörld <tööl");
    }
}
