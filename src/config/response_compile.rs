//! Compiling an API's `policies.response_transformation`: header names and
//! values checked once, here. Values are plain text (no `${…}`: an
//! upstream's answer is no place for token properties). Fields that frame
//! the message or belong to one connection (RFC 9110 §7.6.1, §8.6; RFC
//! 9112 §6) are refused: the gateway sets those itself.

use http::{HeaderName, HeaderValue};

use super::context::{header_name, is_connection_field, Ctx, CONNECTION_FIELDS};
use super::raw::{self, S};
use super::snapshot::ResponseTransform;

pub fn compile(ctx: &mut Ctx, policies: &raw::Policies) -> ResponseTransform {
    let Some(entry) = &policies.response_transformation else {
        return ResponseTransform::default();
    };
    let mut transform = ResponseTransform::default();
    for (name, value) in &entry.value.set_headers.0 {
        let name = end_to_end(ctx, name);
        let text = &value.value.0;
        if text.contains("${") {
            ctx.report.error(
                value.referenced,
                format!("response_transformation value `{text}` has a `${{…}}` variable"),
                "plain text (variables are for request_transformation)",
            );
            continue;
        }
        let Ok(value) = HeaderValue::from_str(text) else {
            ctx.report.error(
                value.referenced,
                format!("response_transformation value `{text}` is not a valid header value"),
                "visible ASCII text, spaces and tabs",
            );
            continue;
        };
        if let Some(name) = name {
            transform.set.push((name, value));
        }
    }
    for name in &entry.value.remove_headers {
        if let Some(name) = end_to_end(ctx, name) {
            if !transform.remove.contains(&name) {
                transform.remove.push(name);
            }
        }
    }
    transform
}

fn end_to_end(ctx: &mut Ctx, written: &S<String>) -> Option<HeaderName> {
    let name = header_name(ctx, written)?;
    if is_connection_field(&name) {
        ctx.report.error(
            written.referenced,
            format!(
                "response_transformation cannot set or remove `{}`",
                written.value
            ),
            format!("an end-to-end header name; {CONNECTION_FIELDS} are the gateway's"),
        );
        return None;
    }
    Some(name)
}
