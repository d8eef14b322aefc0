//! A2A's gRPC messages to and from their proto3 JSON form, with the serde code pbjson
//! generated for `fleet_proto::a2a`.
//!
//! The JSON-RPC binding's params and results are exactly the proto3 JSON of the gRPC
//! binding's messages (the specification defines them so), so the gRPC door reuses
//! [`super::super::ops`] unchanged: message → JSON → operation → JSON → message.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::a2a::errors::A2aError;

/// `message` (of type `lf.a2a.v1.NAME`) as proto3 JSON: camelCase names, enums by name,
/// fields at their defaults left out.
pub fn to_json<M: Serialize>(message: &M, name: &str) -> Result<Value, A2aError> {
    serde_json::to_value(message).map_err(|e| A2aError::internal(format!("{name} as JSON: {e}")))
}

/// proto3 JSON as `lf.a2a.v1.NAME`. Fields the message does not have are dropped (the
/// cards carry A2A 0.3's beside 1.0's); anything else out of shape is the head's bug.
pub fn from_json<M: DeserializeOwned>(json: &Value, name: &str) -> Result<M, A2aError> {
    M::deserialize(json)
        .map_err(|e| A2aError::internal(format!("the head's {name} does not fit a2a.proto: {e}")))
}

#[cfg(test)]
mod tests {
    use fleet_proto::a2a::{Part, Role, SendMessageRequest, StreamResponse, part, stream_response};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_request_reads_as_the_json_rpc_params_and_a_response_comes_back_from_them() {
        let request = SendMessageRequest {
            tenant: "echo".into(),
            message: Some(fleet_proto::a2a::Message {
                message_id: "m1".into(),
                role: Role::User as i32,
                parts: vec![Part {
                    content: Some(part::Content::Text("hi".into())),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let params = to_json(&request, "SendMessageRequest").expect("json");
        assert_eq!(
            params,
            json!({"tenant": "echo", "message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}})
        );

        let event = json!({"statusUpdate": {"taskId": "t", "contextId": "c",
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": "2026-11-30T12:00:00.250Z"}},
            "kind": "a 0.3 leftover, dropped"});
        let response: StreamResponse = from_json(&event, "StreamResponse").expect("proto");
        let Some(stream_response::Payload::StatusUpdate(update)) = response.payload else {
            panic!("not a status update: {response:?}");
        };
        let status = update.status.expect("status");
        assert_eq!(status.state, fleet_proto::a2a::TaskState::Completed as i32);
        assert_eq!(status.timestamp.map(|t| t.nanos), Some(250_000_000));

        let wrong = from_json::<StreamResponse>(
            &json!({"task": {"status": {"state": 7.5}}}),
            "StreamResponse",
        );
        assert!(wrong.is_err());
    }
}
