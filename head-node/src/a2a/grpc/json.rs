//! A2A's gRPC messages to and from their proto3 JSON form, by reflection over the
//! descriptor set `fleet_proto::a2a` was generated from.
//!
//! The JSON-RPC binding's params and results are exactly the proto3 JSON of the gRPC
//! binding's messages (the specification defines them so), so the gRPC door reuses
//! [`super::super::ops`] unchanged: message → bytes → dynamic message → JSON, and back.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};
use serde_json::Value;

use crate::a2a::errors::A2aError;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(fleet_proto::a2a::DESCRIPTOR_SET)
        .expect("the descriptor set built with fleet-proto decodes")
});

/// `lf.a2a.v1.NAME`'s descriptor.
fn descriptor(name: &str) -> Result<MessageDescriptor, A2aError> {
    POOL.get_message_by_name(&format!("lf.a2a.v1.{name}"))
        .ok_or_else(|| A2aError::internal(format!("no message lf.a2a.v1.{name} in a2a.proto")))
}

/// `message` (of type `lf.a2a.v1.NAME`) as proto3 JSON: camelCase names, enums by name,
/// fields at their defaults left out.
pub fn to_json<M: Message>(message: &M, name: &str) -> Result<Value, A2aError> {
    let dynamic = DynamicMessage::decode(descriptor(name)?, message.encode_to_vec().as_slice())
        .map_err(|e| A2aError::internal(format!("re-reading {name}: {e}")))?;
    serde_json::to_value(&dynamic).map_err(|e| A2aError::internal(format!("{name} as JSON: {e}")))
}

/// proto3 JSON as `lf.a2a.v1.NAME`. Fields the message does not have are dropped (the
/// cards carry A2A 0.3's beside 1.0's); anything else out of shape is the head's bug.
pub fn from_json<M: Message + Default>(json: &Value, name: &str) -> Result<M, A2aError> {
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic = DynamicMessage::deserialize_with_options(descriptor(name)?, json, &options)
        .map_err(|e| {
            A2aError::internal(format!("the head's {name} does not fit a2a.proto: {e}"))
        })?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| A2aError::internal(format!("re-reading {name}: {e}")))
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
