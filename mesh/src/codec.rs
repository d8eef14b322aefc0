//! The one place that knows the wire format.
//!
//! Every payload (asks, answers, gossipsub messages) is bincode 2 with the standard config
//! (little endian, varint integers) through serde. Request-response streams carry one frame
//! each way: a u32 big-endian length, then that many bytes of bincode. Anything a peer sends
//! that is too large or does not decode becomes an `io::Error` of kind `InvalidData` (the
//! stream is dropped, the connection stays), is counted in `frames_rejected` and logged here:
//! a request that fails to read never reaches the behaviour's events, so this is the only
//! place that sees it. Frames we fail to encode are `InvalidInput`, so the two are told apart.

use std::{io, sync::Arc};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{StreamProtocol, request_response};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    MeshError, MeshRequest, MeshResponse, Result,
    counters::{self, Counters},
};

/// The largest frame limit a mesh may be configured with. bincode's decode limit is a const
/// generic, so it is this fixed ceiling; the configured (smaller) limit is checked on the
/// frame length before decoding.
pub const MAX_FRAME_CEILING: usize = 256 * 1024 * 1024;

/// The request-response protocol for asks between workers.
pub(crate) const CALL_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentfleet/call/1");

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_CEILING>()
}

/// Encodes `value`, failing if the result is larger than `limit` bytes.
pub fn encode<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>> {
    // bincode's limit only applies to decoding, so the size is checked here.
    let len = encoded_len(value)?;
    if len > limit {
        return Err(MeshError::Codec(format!(
            "message of {len} bytes is over the {limit}-byte frame limit"
        )));
    }
    let mut bytes = Vec::with_capacity(len);
    bincode::serde::encode_into_std_write(value, &mut bytes, bincode_config())
        .map_err(|e| MeshError::Codec(format!("cannot encode message: {e}")))?;
    Ok(bytes)
}

/// A whole frame for a stream: the u32 big-endian length, then `value`'s bincode.
pub(crate) fn frame<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>> {
    let body = encode(value, limit)?;
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// The encoded size of `value` in bytes, without allocating the encoding.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, bincode_config())
        .map_err(|e| MeshError::Codec(format!("cannot encode message: {e}")))?;
    Ok(size.bytes_written)
}

/// Decodes a whole frame of at most `limit` bytes; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T> {
    if bytes.len() > limit {
        return Err(MeshError::Codec(format!(
            "frame of {} bytes is over the {limit}-byte frame limit",
            bytes.len()
        )));
    }
    let (value, read) = bincode::serde::decode_from_slice::<T, _>(bytes, bincode_config())
        .map_err(|e| MeshError::Codec(format!("malformed frame: {e}")))?;
    if read != bytes.len() {
        return Err(MeshError::Codec(format!(
            "malformed frame: {} trailing bytes after the message",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// The request-response codec: length-prefixed bincode frames of at most `max_frame` bytes.
#[derive(Clone)]
pub(crate) struct MeshCodec {
    max_frame: usize,
    counters: Arc<Counters>,
}

impl MeshCodec {
    pub(crate) fn new(max_frame: usize, counters: Arc<Counters>) -> Self {
        Self { max_frame, counters }
    }

    /// Reads one frame and decodes it, rejecting (and counting) oversized or malformed ones.
    async fn read_message<T, R>(&self, io: &mut R, what: &'static str) -> io::Result<T>
    where
        T: DeserializeOwned,
        R: AsyncRead + Unpin + Send,
    {
        let mut prefix = [0u8; 4];
        io.read_exact(&mut prefix).await?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame {
            // Checked before allocating: the prefix is whatever the peer chose to send.
            return Err(self.reject(
                what,
                format!("{len}-byte frame is over the {}-byte limit", self.max_frame),
            ));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        decode(&buf, self.max_frame).map_err(|e| match e {
            MeshError::Codec(reason) => self.reject(what, reason),
            other => self.reject(what, other.to_string()),
        })
    }

    fn reject(&self, what: &'static str, reason: String) -> io::Error {
        counters::add(&self.counters.frames_rejected, 1);
        tracing::warn!(what, %reason, "dropping a frame from a peer");
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }

    async fn write_message<T, W>(&self, io: &mut W, value: &T) -> io::Result<()>
    where
        T: Serialize,
        W: AsyncWrite + Unpin + Send,
    {
        let bytes = encode(value, self.max_frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let len = u32::try_from(bytes.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "frame does not fit a u32 length prefix")
        })?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(&bytes).await?;
        // The handler closes the stream after a write, which flushes too; flushing here keeps
        // the frame from waiting on that.
        io.flush().await
    }
}

impl request_response::Codec for MeshCodec {
    type Protocol = StreamProtocol;
    type Request = MeshRequest;
    type Response = MeshResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<MeshRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_message(io, "request").await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<MeshResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_message(io, "response").await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: MeshRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_message(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: MeshResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_message(io, &response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentCall;

    fn call(input: &str) -> MeshRequest {
        MeshRequest::Call(AgentCall {
            agent: "writer".into(),
            context_id: "ctx".into(),
            input: input.into(),
            caller_task: "t1".into(),
            trace: String::new(),
            timeout_ms: 1000,
            depth: 0,
        })
    }

    #[test]
    fn round_trips_and_enforces_the_limit() -> anyhow::Result<()> {
        let request = call("hello");
        let bytes = encode(&request, 1024)?;
        assert_eq!(bytes.len(), encoded_len(&request)?);
        assert_eq!(decode::<MeshRequest>(&bytes, 1024)?, request);

        assert!(matches!(encode(&call(&"x".repeat(2000)), 1024), Err(MeshError::Codec(_))));
        assert!(matches!(decode::<MeshRequest>(&bytes, 4), Err(MeshError::Codec(_))));
        Ok(())
    }

    #[test]
    fn rejects_garbage_and_trailing_bytes() -> anyhow::Result<()> {
        assert!(decode::<MeshRequest>(&[0xff, 0xff, 0xff, 0xff, 0xff], 1024).is_err());
        // A string claiming far more bytes than the frame holds.
        assert!(decode::<MeshResponse>(&[0, 0xfc, 0xff, 0xff, 0xff, 0x7f], 1024).is_err());
        let mut bytes = encode(&MeshResponse::Pong, 1024)?;
        bytes.push(0);
        assert!(decode::<MeshResponse>(&bytes, 1024).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn frames_over_the_limit_are_invalid_data() -> anyhow::Result<()> {
        use request_response::Codec as _;

        let counters = Arc::new(Counters::default());
        let mut codec = MeshCodec::new(64, counters.clone());
        let mut frame = 1_000_000u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 16]);
        let err = codec
            .read_request(&CALL_PROTOCOL, &mut futures::io::Cursor::new(frame))
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::InvalidData));

        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xee; 5]);
        let err = codec
            .read_request(&CALL_PROTOCOL, &mut futures::io::Cursor::new(garbage))
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::InvalidData));
        assert_eq!(counters.snapshot().frames_rejected, 2);

        let mut out = futures::io::Cursor::new(Vec::new());
        codec.write_request(&CALL_PROTOCOL, &mut out, MeshRequest::Ping).await?;
        let read = codec
            .read_request(&CALL_PROTOCOL, &mut futures::io::Cursor::new(out.into_inner()))
            .await?;
        assert_eq!(read, MeshRequest::Ping);
        Ok(())
    }
}
