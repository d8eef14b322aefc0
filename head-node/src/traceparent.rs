//! The W3C `traceparent` a request arrives with, which the tasks it submits continue: from
//! gRPC metadata, or from an HTTP header through [`scope`], a layer that keeps it for the
//! request's handler (A2A and OpenAI handlers submit inside it). A malformed one is
//! ignored, as the W3C spec says: the task starts a trace of its own.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

const HEADER: &str = "traceparent";

tokio::task_local! {
    static INCOMING: String;
}

/// Runs an HTTP request's handler with the request's `traceparent` at hand.
pub async fn scope(request: Request, next: Next) -> Response {
    let parent = checked(request.headers().get(HEADER).and_then(|v| v.to_str().ok()));
    INCOMING.scope(parent, next.run(request)).await
}

/// The `traceparent` of the HTTP request being handled (empty: none, or not in a request).
pub fn incoming() -> String {
    INCOMING.try_with(Clone::clone).unwrap_or_default()
}

/// The `traceparent` among HTTP headers (empty: none), for handlers that run outside
/// [`scope`] (MCP's run on a task of their own).
pub fn from_headers(headers: &axum::http::HeaderMap) -> String {
    checked(headers.get(HEADER).and_then(|v| v.to_str().ok()))
}

/// The `traceparent` in a gRPC request's metadata (empty: none).
pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> String {
    checked(metadata.get(HEADER).and_then(|v| v.to_str().ok()))
}

fn checked(value: Option<&str>) -> String {
    value.map(fleet_telemetry::normalized).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_metadata_gives_a_well_formed_traceparent_only() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(from_metadata(&metadata), "");
        metadata.insert(HEADER, good.parse().expect("ascii"));
        assert_eq!(from_metadata(&metadata), good);
        metadata.insert(HEADER, "00-zz-b7ad6b7169203331-01".parse().expect("ascii"));
        assert_eq!(from_metadata(&metadata), "");
    }

    #[tokio::test]
    async fn outside_a_request_there_is_none() {
        assert_eq!(incoming(), "");
        let inside = INCOMING.scope("00-x".to_owned(), async { incoming() }).await;
        assert_eq!(inside, "00-x");
    }
}
