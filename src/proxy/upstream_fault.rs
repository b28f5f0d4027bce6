//! What the gateway says of an upstream's fault: counted every time in
//! `upstream_errors_total`, and said where nginx's error log would say
//! it, at warn once in a while per API (an upstream that is down fails
//! every request; [`Sparse`](crate::sparse::Sparse)).

use std::fmt::Display;

use crate::metrics::ApiMetrics;

/// An exchange the upstream failed (no answer, or none usable): warned
/// about once in a while, at debug every other time.
pub fn failed(metrics: &ApiMetrics, cause: &'static str, error: &dyn Display) {
    match metrics.failure_line_due() {
        Some(suppressed) => {
            tracing::warn!(api = metrics.api(), cause, %error, suppressed, "the upstream failed the request");
        }
        None => {
            tracing::debug!(api = metrics.api(), cause, %error, "the upstream failed the request");
        }
    }
    metrics.upstream_error(cause);
}

/// An answer that broke off after its head went out: the client's answer
/// is cut, and its access-log line, written with the head, cannot say so.
pub fn broke_off(metrics: &ApiMetrics, cause: &'static str, error: Option<&dyn Display>) {
    if let Some(suppressed) = metrics.broke_off_line_due() {
        match error {
            Some(error) => tracing::warn!(
                api = metrics.api(),
                cause,
                %error,
                suppressed,
                "the upstream's answer broke off; the client's is cut"
            ),
            None => tracing::warn!(
                api = metrics.api(),
                cause,
                suppressed,
                "the upstream's answer broke off; the client's is cut"
            ),
        }
    }
    metrics.upstream_error(cause);
}
