//! A `session/prompt`'s content blocks as a task's input: text as it is, a linked resource
//! by its link, an embedded text resource quoted with its URI, embedded bytes as a file of
//! the task. Images and audio are refused: the agent says it takes neither
//! (`promptCapabilities`).

use base64::Engine as _;
use fleet_client::FilePart;
use serde_json::Value;

use super::rpc::RpcError;

/// What a prompt gives the task.
#[derive(Debug, Default, PartialEq)]
pub struct Input {
    pub text: String,
    pub files: Vec<FilePart>,
}

/// The prompt's blocks (`params.prompt`) read into one input.
pub fn read(prompt: &Value) -> Result<Input, RpcError> {
    let Some(blocks) = prompt.as_array() else {
        return Err(RpcError::invalid_params("prompt", "an array of content blocks"));
    };
    let mut input = Input::default();
    let mut add = |text: &str| {
        if !input.text.is_empty() && !text.is_empty() {
            input.text.push_str("\n\n");
        }
        input.text.push_str(text);
    };
    let mut files = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let field = |name: &str| format!("prompt[{i}].{name}");
        let str_of = |name: &str| block.get(name).and_then(Value::as_str);
        match str_of("type") {
            Some("text") => add(str_of("text").ok_or_else(|| {
                RpcError::invalid_params(&field("text"), "a text block needs its text")
            })?),
            Some("resource_link") => {
                let uri = str_of("uri").ok_or_else(|| {
                    RpcError::invalid_params(&field("uri"), "a resource link needs its uri")
                })?;
                let name = str_of("title").or(str_of("name")).unwrap_or(uri);
                add(&format!("[{name}]({uri})"));
            }
            Some("resource") => {
                let resource = block.get("resource").unwrap_or(&Value::Null);
                let uri = resource.get("uri").and_then(Value::as_str).ok_or_else(|| {
                    RpcError::invalid_params(
                        &field("resource.uri"),
                        "an embedded resource needs its uri",
                    )
                })?;
                let media_type = resource.get("mimeType").and_then(Value::as_str).unwrap_or("");
                if let Some(text) = resource.get("text").and_then(Value::as_str) {
                    add(&format!("<resource uri=\"{uri}\">\n{text}\n</resource>"));
                } else if let Some(blob) = resource.get("blob").and_then(Value::as_str) {
                    let data =
                        base64::engine::general_purpose::STANDARD.decode(blob).map_err(|e| {
                            RpcError::invalid_params(
                                &field("resource.blob"),
                                format!("not base64: {e}"),
                            )
                        })?;
                    let name = uri.rsplit('/').next().unwrap_or(uri).to_owned();
                    files.push(FilePart {
                        name,
                        media_type: media_type.to_owned(),
                        data,
                        url: String::new(),
                    });
                } else {
                    return Err(RpcError::invalid_params(
                        &field("resource"),
                        "an embedded resource holds text or a blob",
                    ));
                }
            }
            Some(kind @ ("image" | "audio")) => {
                return Err(RpcError::invalid_params(
                    &field("type"),
                    format!(
                        "{kind} content is not taken (the agent's promptCapabilities say so): send \
                         text, a resource link or an embedded resource"
                    ),
                ));
            }
            Some(other) => {
                return Err(RpcError::invalid_params(
                    &field("type"),
                    format!("unknown content type {other:?}: text, resource_link or resource"),
                ));
            }
            None => {
                return Err(RpcError::invalid_params(
                    &field("type"),
                    "a content block needs a type",
                ));
            }
        }
    }
    input.files = files;
    if input.text.is_empty() && input.files.is_empty() {
        return Err(RpcError::invalid_params("prompt", "the prompt is empty"));
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_links_and_resources_make_one_input() -> Result<(), RpcError> {
        let input = read(&json!([
            {"type": "text", "text": "Explain this"},
            {"type": "resource_link", "name": "main.rs", "uri": "file:///src/main.rs"},
            {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "alpha"}},
            {"type": "resource", "resource": {"uri": "file:///b.bin", "mimeType": "application/octet-stream", "blob": "AAE="}},
        ]))?;
        assert_eq!(
            input.text,
            "Explain this\n\n[main.rs](file:///src/main.rs)\n\n<resource uri=\"file:///a.txt\">\nalpha\n</resource>"
        );
        assert_eq!(input.files.len(), 1);
        assert_eq!(
            (input.files[0].name.as_str(), &input.files[0].data[..]),
            ("b.bin", &[0u8, 1][..])
        );
        Ok(())
    }

    #[test]
    fn refusals_name_the_block() {
        let field =
            |prompt: Value| read(&prompt).err().and_then(|e| e.data).map(|d| d["field"].clone());
        assert_eq!(
            field(
                json!([{"type": "text", "text": "x"}, {"type": "image", "data": "", "mimeType": "image/png"}])
            ),
            Some(json!("prompt[1].type"))
        );
        assert_eq!(field(json!([{"type": "text"}])), Some(json!("prompt[0].text")));
        assert_eq!(field(json!([])), Some(json!("prompt")));
        assert_eq!(field(json!("hi")), Some(json!("prompt")));
        assert_eq!(
            field(json!([{"type": "resource", "resource": {"uri": "u", "blob": "!!"}}])),
            Some(json!("prompt[0].resource.blob"))
        );
    }
}
