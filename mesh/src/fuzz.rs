//! Fuzz targets for the frames peers send (see `fleet_testkit::fuzz`; `FLEET_FUZZ_CASES`
//! cases each, 10,000 by default): valid call and gossip frames, mutated, decoded as a
//! receiving node decodes them. A malformed frame must be an error, never a panic.

use proptest::prelude::*;

use crate::calls::CallFrame;
use crate::codec;
use crate::messages::{AgentCall, GossipFrame, MeshRequest, MeshResponse, TopicMessage};
use fleet_testkit::fuzz::{config, mutated};

const LIMIT: usize = 1 << 20;

fn seeds() -> Vec<Vec<u8>> {
    let call = AgentCall {
        agent: "echo".into(),
        context_id: "ctx".into(),
        input: "hello".into(),
        caller_task: "t1".into(),
        trace: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        timeout_ms: 30_000,
        depth: 1,
    };
    let frames = [
        CallFrame::Ask { id: 1, request: MeshRequest::Call(call) },
        CallFrame::Ask { id: 2, request: MeshRequest::Ping },
        CallFrame::Answer {
            id: 1,
            response: MeshResponse::Reply { output: "hi".into(), is_error: false },
        },
        CallFrame::Answer { id: 3, response: MeshResponse::Refused { reason: "busy".into() } },
        CallFrame::Cancel { id: 4 },
    ];
    let mut seeds: Vec<Vec<u8>> =
        frames.iter().filter_map(|f| codec::encode(f, LIMIT).ok()).collect();
    let gossip = GossipFrame {
        epoch: 1_700_000_000_000_000_000,
        message: TopicMessage {
            topic: "news".into(),
            publisher: "agent".into(),
            seq: 7,
            body: "body".into(),
            node: String::new(),
        },
    };
    seeds.extend(codec::encode(&gossip, LIMIT).ok());
    seeds
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn peer_frames(bytes in mutated(seeds())) {
        let _ = codec::decode::<CallFrame>(&bytes, LIMIT);
        let _ = codec::decode::<GossipFrame>(&bytes, LIMIT);
    }
}
