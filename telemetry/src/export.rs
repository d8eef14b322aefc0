//! The exporter: an OTLP/HTTP protobuf span exporter behind the SDK's batch processor (its
//! own thread; spans are queued without blocking and dropped, not waited on, when the
//! queue is full), installed as this process's tracer.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The process's tracer, once [`init`] installed one.
pub(crate) static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("tracing is already set up in this process")]
    AlreadyOn,
}

/// Flushes and stops the exporter when dropped (or at [`Exporter::shutdown`]): spans ended
/// before a clean stop are sent.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
    url: String,
}

impl Exporter {
    /// Where the spans go (the collector's `/v1/traces`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends the spans that ended so far (blocks until they are sent or the export times
    /// out).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Sends what is queued and stops exporting.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Where traces go for an endpoint given the way `OTEL_EXPORTER_OTLP_ENDPOINT` is (the
/// collector's base URL): its `/v1/traces`, unless the URL already names that path.
pub fn traces_endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// Where this process's spans go: `endpoint` (a base URL, given with `--otlp-endpoint` or
/// `af.init(otlp_endpoint=...)`), else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL), the order the OpenTelemetry spec gives
/// them; `None`: tracing stays off.
pub fn resolve_endpoint(endpoint: Option<&str>) -> Option<String> {
    let given = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(base) = given(endpoint.map(str::to_owned)) {
        return Some(traces_endpoint(&base));
    }
    if let Some(url) = given(std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok()) {
        return Some(url);
    }
    given(std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()).map(|base| traces_endpoint(&base))
}

/// Starts exporting this process's spans to the collector [`resolve_endpoint`] names, if
/// any (`None`: tracing stays off). `service` names the process in its resource
/// (`OTEL_SERVICE_NAME` wins), `instance` tells processes of one service apart. The SDK's
/// own variables apply: `OTEL_TRACES_SAMPLER` (parent-based always-on by default),
/// `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`, ...
pub fn init(
    endpoint: Option<&str>,
    service: &str,
    instance: &str,
) -> Result<Option<Exporter>, Error> {
    let Some(url) = resolve_endpoint(endpoint) else { return Ok(None) };
    if TRACER.get().is_some() {
        return Err(Error::AlreadyOn);
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Endpoint {
            endpoint: url,
            reason: "give an http:// or https:// URL, such as http://127.0.0.1:4318".into(),
        });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(EXPORT_TIMEOUT)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| Error::Endpoint { endpoint: url.clone(), reason: e.to_string() })?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| service.to_owned());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance.to_owned()))
        .build();
    let provider =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    TRACER.set(provider.tracer("agentfleet")).map_err(|_| Error::AlreadyOn)?;
    Ok(Some(Exporter { provider, url }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_base_urls_like_the_standard_variable() {
        assert_eq!(traces_endpoint("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_endpoint("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_endpoint("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
