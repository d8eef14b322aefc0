//! The head's gRPC front: the client API ([`fleet`]), the workers' `Join` stream
//! ([`worker`]), wire conversions of head-only types ([`wire`]) and the event streams they
//! share ([`streams`]).

pub mod fleet;
pub mod streams;
pub mod wire;
pub mod worker;
