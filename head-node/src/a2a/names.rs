//! ProtoJSON field names: A2A's JSON is the protobuf schema's JSON mapping, whose parsers
//! accept both the lowerCamelCase names and the `.proto` field names (`task_id`,
//! `history_length`, ...). The operations read the camelCase names, so incoming bodies are
//! normalised once at the door.

use serde_json::{Map, Value};

/// Keys whose values are free-form (`google.protobuf.Struct` or user data): their keys are
/// the client's own and stay as sent.
const OPAQUE: [&str; 2] = ["metadata", "data"];

/// Renames every snake_case key of `value` (outside [`OPAQUE`] values) to lowerCamelCase.
/// A key already present in camelCase wins over its snake_case twin.
pub fn accept_proto_names(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let renamed: Map<String, Value> = std::mem::take(map)
                .into_iter()
                .map(|(key, mut v)| {
                    if !OPAQUE.contains(&key.as_str()) {
                        accept_proto_names(&mut v);
                    }
                    (camel(&key), key, v)
                })
                .fold(Map::new(), |mut out, (camel, key, v)| {
                    // The camelCase spelling wins whichever order the two came in.
                    if camel == key || !out.contains_key(&camel) {
                        out.insert(camel, v);
                    }
                    out
                });
            *map = renamed;
        }
        Value::Array(items) => items.iter_mut().for_each(accept_proto_names),
        _ => {}
    }
}

/// `history_length` → `historyLength`; names without `_` are returned as they are.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proto_names_become_camel_case_outside_user_data() {
        let mut v = json!({
            "task_id": "t1",
            "configuration": {"history_length": 2, "accepted_output_modes": ["text/plain"]},
            "message": {
                "message_id": "m1",
                "context_id": "c1",
                "parts": [{"text": "hi", "media_type": "text/plain"}, {"data": {"my_key": 1}}],
                "metadata": {"user_key": {"inner_key": 1}}
            },
            "pushNotificationConfig": {"url": "https://x"}
        });
        accept_proto_names(&mut v);
        assert_eq!(
            v,
            json!({
                "taskId": "t1",
                "configuration": {"historyLength": 2, "acceptedOutputModes": ["text/plain"]},
                "message": {
                    "messageId": "m1",
                    "contextId": "c1",
                    "parts": [{"text": "hi", "mediaType": "text/plain"}, {"data": {"my_key": 1}}],
                    "metadata": {"user_key": {"inner_key": 1}}
                },
                "pushNotificationConfig": {"url": "https://x"}
            })
        );
    }

    #[test]
    fn the_camel_case_spelling_wins_in_either_order() {
        for body in [r#"{"taskId": "a", "task_id": "b"}"#, r#"{"task_id": "b", "taskId": "a"}"#] {
            let mut v: Value = serde_json::from_str(body).unwrap_or_default();
            accept_proto_names(&mut v);
            assert_eq!(v, json!({"taskId": "a"}), "{body}");
        }
    }
}
