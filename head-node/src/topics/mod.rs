//! Topics: a swarm's shared channels. Each topic has a log on the head ([`log`]): every
//! message published, by a client (`Publish`) or an agent (its worker sends it up the
//! `Join` stream), is stored with an offset and kept as retention says, so a follower
//! resumes from an offset after being down, and consumer groups ([`group`]) share a topic
//! as a work queue with at-least-once delivery. The workers' mesh carries the same
//! messages between agents (their prompts show the latest); [`relay`] lets a client watch
//! a topic through one worker's mesh subscription, without offsets.

pub mod group;
pub mod log;
pub mod relay;

pub use log::{Message, Retention, StoredTopic, TopicLog};
pub use relay::{FOLLOWER_BUFFER, MAX_PUBLISHES_IN_FLIGHT, PublishOutcome, TopicRelays};
