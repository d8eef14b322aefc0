//! One span, empty while tracing is off, and W3C `traceparent` strings in and out.

use std::borrow::Cow;
use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::export::TRACER;

/// The longest error description a span carries (a failed tool's whole output could be
/// megabytes).
const MAX_DESCRIPTION: usize = 1024;

/// A span of this process, ended when dropped or at [`Span::end`]; empty (every call a
/// no-op) while tracing is off.
#[derive(Debug, Default)]
pub struct Span {
    /// Boxed: an empty span (tracing off, the usual case) is one word in every task the
    /// head holds, not the SDK span's 288 bytes.
    inner: Option<Box<opentelemetry_sdk::trace::Span>>,
}

impl Span {
    /// An empty span.
    pub fn none() -> Self {
        Span { inner: None }
    }

    /// Whether this process exports spans.
    pub fn enabled() -> bool {
        TRACER.get().is_some()
    }

    /// Starts a span named `name` under the span `parent` names (a `traceparent`; empty or
    /// malformed: a new trace). Empty while tracing is off.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: &str,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else { return Self::none() };
        let parent = remote_parent(parent);
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Span { inner: Some(Box::new(span)) }
    }

    /// Whether this span records (tracing is on, and the trace is sampled).
    pub fn is_recording(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_recording())
    }

    /// This span as its children's `traceparent`; empty when the span is.
    pub fn traceparent(&self) -> String {
        let Some(span) = &self.inner else { return String::new() };
        let cx = span.span_context();
        if !cx.is_valid() {
            return String::new();
        }
        format!("00-{}-{}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8())
    }

    /// This span's `traceparent`, or `parent` when the span is empty: a process that does
    /// not trace still hands its caller's trace on.
    pub fn traceparent_or(&self, parent: &str) -> String {
        match self.traceparent() {
            own if own.is_empty() => parent.to_owned(),
            own => own,
        }
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(span) = &mut self.inner {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Records a moment of the span's life (scheduled, first token, retried).
    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Some(span) = &mut self.inner {
            span.add_event(name, attributes);
        }
    }

    /// Marks the span failed: status error with `description` (its first KiB), and
    /// `error.type`.
    pub fn fail(&mut self, error_type: &'static str, description: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.inner {
            let mut description = description.into();
            if description.len() > MAX_DESCRIPTION {
                let mut end = MAX_DESCRIPTION;
                while !description.is_char_boundary(end) {
                    end -= 1;
                }
                description = Cow::Owned(format!("{}…", &description[..end]));
            }
            span.set_attribute(KeyValue::new(crate::attr::ERROR_TYPE, error_type));
            span.set_status(Status::error(description));
        }
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(&mut self) {
        if let Some(mut span) = self.inner.take() {
            span.end();
        }
    }
}

/// Whether `traceparent` is a well-formed W3C `traceparent` with a valid trace and span.
pub fn valid_traceparent(traceparent: &str) -> bool {
    !normalized(traceparent).is_empty()
}

/// `traceparent` as this process hands it on: in its canonical form (version 00, lowercase
/// hex, 55 characters) when it is a valid one, else empty. What comes from outside (a
/// request's header, a worker's event, a mesh call) goes through here, so nothing longer
/// or stranger travels on.
pub fn normalized(traceparent: &str) -> String {
    let traceparent = traceparent.trim();
    // The spec's form: 2 + 32 + 16 + 2 hex digits and 3 dashes; later versions may add
    // fields after a fourth dash.
    let fields: Vec<&str> = traceparent.splitn(5, '-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if fields.len() < 4 || !fields[..4].iter().zip([2, 32, 16, 2]).all(|(f, n)| hex(f, n)) {
        return String::new();
    }
    let cx = remote_parent(traceparent).span().span_context().clone();
    if !cx.is_valid() {
        return String::new();
    }
    format!("00-{}-{}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8())
}

fn remote_parent(traceparent: &str) -> Context {
    if traceparent.is_empty() {
        return Context::new();
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_like_the_w3c_spec_says() {
        assert!(valid_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert!(!valid_traceparent(""));
        assert!(!valid_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01"));
        assert!(!valid_traceparent("00-0af7651916cd43dd8448eb211c80319c-zz-01"));
        assert!(!valid_traceparent("not a traceparent"));
        assert!(!valid_traceparent("00-1-1-01"));
        assert!(!valid_traceparent("00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(
            normalized(" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 "),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        // Uppercase hex is invalid in a traceparent (W3C), unknown flags are zeroed.
        assert_eq!(normalized("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"), "");
        assert_eq!(
            normalized("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff"),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let longer = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-".to_owned()
            + &"x".repeat(10_000);
        assert_eq!(normalized(&longer), "", "version 00 has exactly four fields");
    }

    #[test]
    fn spans_are_empty_while_tracing_is_off() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut span = Span::start("chat m", SpanKind::Internal, parent, vec![]);
        span.set(crate::attr::GEN_AI_REQUEST_MODEL, "m");
        assert!(!span.is_recording());
        assert_eq!(span.traceparent(), "");
        assert_eq!(span.traceparent_or(parent), parent);
    }
}
