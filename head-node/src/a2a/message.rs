//! Reading what a client sends: the message of SendMessage in either dialect.

use serde_json::Value;

use super::errors::A2aError;

/// The parts of an incoming message the cluster uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub text: String,
    pub context_id: Option<String>,
    pub task_id: Option<String>,
}

/// Reads `params.message`: its text parts joined by newlines; data parts as JSON text.
/// File parts are refused with ContentTypeNotSupported.
pub fn incoming(params: &Value) -> Result<Incoming, A2aError> {
    let message = params.get("message").filter(|m| m.is_object()).ok_or_else(|| {
        A2aError::invalid_params("params.message is missing: send {\"message\": {...}}")
    })?;
    let parts = message
        .get("parts")
        .and_then(Value::as_array)
        .ok_or_else(|| A2aError::invalid_params("message.parts must be an array of parts"))?;
    let mut texts = Vec::with_capacity(parts.len());
    for part in parts {
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            texts.push(text.to_owned());
        } else if let Some(data) = part.get("data") {
            // 0.3 wraps data parts as {"kind": "data", "data": {...}}; 1.0 as {"data": ...}.
            texts.push(data.to_string());
        } else if part.get("raw").is_some()
            || part.get("url").is_some()
            || part.get("file").is_some()
        {
            return Err(A2aError::content_type(
                "file parts are not supported: send text or data parts",
            ));
        } else {
            return Err(A2aError::invalid_params(
                "a message part has no text, data or file content",
            ));
        }
    }
    let has_id = message.get("messageId").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    if !has_id {
        return Err(A2aError::invalid_params(
            "message.messageId is missing: every message needs an id of the client's choosing",
        ));
    }
    let text = texts.join("\n");
    if text.trim().is_empty() {
        return Err(A2aError::invalid_params(
            "the message has no text: give the agent something to do",
        ));
    }
    let field = |name: &str| {
        message.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
    };
    Ok(Incoming { text, context_id: field("contextId"), task_id: field("taskId") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_dialects() -> Result<(), A2aError> {
        let v1 = json!({"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}, {"data": {"a": 1}}], "contextId": "c"}});
        assert_eq!(
            incoming(&v1)?,
            Incoming { text: "hi\n{\"a\":1}".into(), context_id: Some("c".into()), task_id: None }
        );
        let v03 = json!({"message": {"kind": "message", "messageId": "m", "role": "user", "parts": [{"kind": "text", "text": "yo"}]}});
        assert_eq!(incoming(&v03)?.text, "yo");
        Ok(())
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let file = json!({"message": {"parts": [{"raw": "AAAA", "mediaType": "image/png"}]}});
        assert_eq!(incoming(&file).err().map(|e| e.code), Some(-32005));
        assert_eq!(incoming(&json!({})).err().map(|e| e.code), Some(-32602));
        let no_id = json!({"message": {"kind": "message", "role": "user", "parts": [{"kind": "text", "text": "yo"}]}});
        assert_eq!(incoming(&no_id).err().map(|e| e.code), Some(-32602));
        assert_eq!(
            incoming(&json!({"message": {"parts": [{"text": " "}]}})).err().map(|e| e.code),
            Some(-32602)
        );
    }
}
