//! Reading what a client sends: the message of SendMessage in either dialect.

use base64::Engine;
use fleet_proto::FilePart;
use serde_json::Value;

use super::errors::A2aError;

/// The parts of an incoming message the cluster uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub text: String,
    pub files: Vec<FilePart>,
    pub context_id: Option<String>,
    pub task_id: Option<String>,
}

/// Reads `params.message`: its text parts joined by newlines; data parts as JSON text; file
/// parts (bytes or a URL) as files (whether its agent takes them is the sender's to check).
pub fn incoming(params: &Value) -> Result<Incoming, A2aError> {
    let message = params.get("message").filter(|m| m.is_object()).ok_or_else(|| {
        A2aError::invalid_params("params.message is missing: send {\"message\": {...}}")
    })?;
    let parts = message
        .get("parts")
        .and_then(Value::as_array)
        .ok_or_else(|| A2aError::invalid_params("message.parts must be an array of parts"))?;
    let mut texts = Vec::with_capacity(parts.len());
    let mut files = Vec::new();
    for part in parts {
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            texts.push(text.to_owned());
        } else if let Some(data) = part.get("data") {
            // 0.3 wraps data parts as {"kind": "data", "data": {...}}; 1.0 as {"data": ...}.
            texts.push(data.to_string());
        } else if let Some(file) = file_part(part)? {
            files.push(file);
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
    if text.trim().is_empty() && files.is_empty() {
        return Err(A2aError::invalid_params(
            "the message has no text: give the agent something to do",
        ));
    }
    let field = |name: &str| {
        message.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
    };
    Ok(Incoming { text, files, context_id: field("contextId"), task_id: field("taskId") })
}

/// A file part: 1.0's `{"raw": BASE64 | "url": URL, "mediaType", "filename"}`, or 0.3's
/// `{"kind": "file", "file": {"bytes": BASE64 | "uri": URL, "mimeType", "name"}}`; `None`
/// for a part that is no file.
fn file_part(part: &Value) -> Result<Option<FilePart>, A2aError> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let (bytes, url, media_type, name) = if let Some(file) = part.get("file") {
        (text(file, "bytes"), text(file, "uri"), text(file, "mimeType"), text(file, "name"))
    } else if part.get("raw").is_some() || part.get("url").is_some() {
        (text(part, "raw"), text(part, "url"), text(part, "mediaType"), text(part, "filename"))
    } else {
        return Ok(None);
    };
    let data = match (&bytes, &url) {
        (Some(b64), None) => {
            base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| {
                A2aError::invalid_params(format!("a file part's bytes are not base64: {e}"))
            })?
        }
        (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Vec::new()
        }
        (None, Some(url)) => {
            return Err(A2aError::invalid_params(format!(
                "a file part's URL must be http:// or https://, not {url:?}"
            )));
        }
        _ => {
            return Err(A2aError::invalid_params(
                "a file part has either bytes (base64) or a URL, not both or neither",
            ));
        }
    };
    Ok(Some(FilePart {
        name: name.unwrap_or_default(),
        media_type: media_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
        data,
        url: url.unwrap_or_default(),
    }))
}

/// Whether a file of `media_type` reads as text: a model agent takes it in its prompt.
pub fn is_text(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/yaml"
                | "application/x-yaml"
                | "application/toml"
                | "application/javascript"
                | "application/x-sh"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
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
            Incoming {
                text: "hi\n{\"a\":1}".into(),
                files: Vec::new(),
                context_id: Some("c".into()),
                task_id: None
            }
        );
        let v03 = json!({"message": {"kind": "message", "messageId": "m", "role": "user", "parts": [{"kind": "text", "text": "yo"}]}});
        assert_eq!(incoming(&v03)?.text, "yo");
        Ok(())
    }

    #[test]
    fn reads_file_parts_and_refuses_what_it_cannot_run() -> Result<(), A2aError> {
        let both = json!({"message": {"messageId": "m", "parts": [{"file": {"bytes": "AAAA", "uri": "https://x"}}]}});
        assert_eq!(incoming(&both).err().map(|e| e.code), Some(-32602));
        let v1 = json!({"message": {"messageId": "m", "parts": [{"raw": "aGk=", "mediaType": "text/plain", "filename": "a.txt"}]}});
        let file = &incoming(&v1)?.files[0];
        assert_eq!(
            (file.name.as_str(), file.media_type.as_str(), &file.data[..]),
            ("a.txt", "text/plain", &b"hi"[..])
        );
        let v03 = json!({"message": {"messageId": "m", "parts": [{"kind": "file", "file": {"uri": "https://example.com/a.png", "mimeType": "image/png"}}]}});
        let file = &incoming(&v03)?.files[0];
        assert_eq!((file.url.as_str(), file.data.len()), ("https://example.com/a.png", 0));
        let local =
            json!({"message": {"messageId": "m", "parts": [{"url": "file:///etc/passwd"}]}});
        assert_eq!(incoming(&local).err().map(|e| e.code), Some(-32602));
        assert_eq!(incoming(&json!({})).err().map(|e| e.code), Some(-32602));
        let no_id = json!({"message": {"kind": "message", "role": "user", "parts": [{"kind": "text", "text": "yo"}]}});
        assert_eq!(incoming(&no_id).err().map(|e| e.code), Some(-32602));
        assert_eq!(
            incoming(&json!({"message": {"parts": [{"text": " "}]}})).err().map(|e| e.code),
            Some(-32602)
        );
        Ok(())
    }
}
