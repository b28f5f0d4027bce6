//! Request transformation: incoming headers that a policy sets or removes
//! are stripped first (every name that folds to theirs, any case with `-`,
//! `_` and `.` alike, so a client cannot spoof them), then token properties
//! are set from the principal. A variable with no value sets no header; a
//! value from the request or its token that is not visible ASCII, space or
//! tab, begins or ends with a space or tab, or is longer than
//! [`MAX_PROPERTY_BYTES`], refuses the request. The
//! names were folded when the snapshot was compiled; a request only
//! compares.
//! Response transformation: the upstream's answer has the policy's fields
//! removed, then set (plain values, checked when compiled).

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::auth::identity::Identity;
use crate::auth::TokenProblem;
use crate::config::snapshot::{Part, ResponseTransform, Transform, Variable};
use crate::http1::request_encode::AddedFields;

/// The longest token property copied into a header: claims of an
/// introspection answer may be up to its 64 KiB, more than an upstream
/// reads in one field.
pub const MAX_PROPERTY_BYTES: usize = 4 * 1024;

pub fn apply(
    transform: &Transform,
    who: Option<&Identity>,
    headers: &mut HeaderMap,
    added: &mut AddedFields,
) -> Result<(), TokenProblem> {
    if !transform.strip.is_empty() {
        let stripped = |name: &HeaderName| transform.strip.iter().any(|s| s.matches(name));
        super::forwarded::remove_matching(headers, stripped);
        // The gateway's own fields too (`X-Request-Id`): what the policy
        // removes or sets is the policy's.
        added.remove_matching(stripped);
    }
    for (name, template) in &transform.set {
        let Some(text) = render(&template.parts, who)? else {
            continue;
        };
        let value = HeaderValue::from_str(&text).map_err(|_| TokenProblem::BadProperty)?;
        headers.append(name.clone(), value);
    }
    Ok(())
}

/// Applies `response_transformation` to an upstream's answer. The
/// upstream's hop-by-hop fields ended with its connection; the policy
/// cannot name them (refused when compiled).
pub fn apply_to_response(transform: &ResponseTransform, headers: &mut HeaderMap) {
    if !transform.remove.is_empty() {
        super::forwarded::remove_matching(headers, |name| transform.remove.contains(name));
    }
    for (name, value) in &transform.set {
        headers.insert(name.clone(), value.clone());
    }
}

/// The header text, `Ok(None)` when a variable has no value.
fn render(parts: &[Part], who: Option<&Identity>) -> Result<Option<String>, TokenProblem> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Var(variable) => {
                let Some(value) = who.and_then(|who| value(variable, who)) else {
                    return Ok(None);
                };
                if !from_configuration(variable) && !is_plain_property(&value) {
                    return Err(TokenProblem::BadProperty);
                }
                out.push_str(&value);
            }
        }
    }
    Ok(Some(out))
}

/// Whether the variable's value was written in the configuration (an
/// application's name), not carried by the request or its token.
fn from_configuration(variable: &Variable) -> bool {
    match variable {
        Variable::ApplicationName | Variable::AuthorizationType => true,
        Variable::ClientId
        | Variable::UserName
        | Variable::Issuer
        | Variable::Audience
        | Variable::Scope
        | Variable::Claim(_) => false,
    }
}

/// RFC 9110 §5.5: a field value is visible ASCII, space and tab, plus
/// `obs-text` (0x80–0xFF), which recipients read as they please (Latin-1,
/// UTF-8, or a refusal); a property is held to the portable part, and
/// its length to [`MAX_PROPERTY_BYTES`]. Parsers strip the whitespace
/// around a field value (§5.5), so a property that begins or ends with a
/// space or tab would reach the upstream as another one (`" admin"` as
/// `admin`).
fn is_plain_property(value: &str) -> bool {
    value.len() <= MAX_PROPERTY_BYTES && crate::config::context::is_plain_value(value.as_bytes())
}

fn value(variable: &Variable, identity: &Identity) -> Option<String> {
    let joined = |items: &[String]| (!items.is_empty()).then(|| items.join(" "));
    match variable {
        Variable::ApplicationName => return identity.application_name().map(str::to_owned),
        Variable::AuthorizationType => return Some(identity.kind.label().to_owned()),
        Variable::UserName if identity.user_name.is_some() => return identity.user_name.clone(),
        _ => {}
    }
    let who = identity.principal.as_deref()?;
    match variable {
        Variable::ApplicationName | Variable::AuthorizationType => None,
        Variable::ClientId => who.client_id.clone(),
        Variable::UserName => who.user_name.clone(),
        Variable::Issuer => who.issuer.clone(),
        Variable::Audience => joined(&who.audience),
        Variable::Scope => joined(&who.token_scopes),
        Variable::Claim(name) => match who.claims.get(name)? {
            Value::String(text) => Some(text.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::snapshot::{FoldedName, ValueTemplate};
    use http::HeaderName;

    fn transform(set: &[&str], remove: &[&str]) -> Transform {
        let header = |text: &str| HeaderName::from_bytes(text.as_bytes()).expect("a header name");
        let set: Vec<(HeaderName, ValueTemplate)> = set
            .iter()
            .map(|name| {
                let parts = vec![Part::Text("gateway".into())];
                (header(name), ValueTemplate { parts })
            })
            .collect();
        let strip = set
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(remove.iter().copied())
            .map(FoldedName::new)
            .collect();
        Transform { set, strip }
    }

    #[test]
    fn every_spelling_that_folds_to_a_set_or_removed_name_is_stripped() {
        let t = transform(&["x-user-id"], &["X-Debug"]);
        let mut headers = HeaderMap::new();
        for spoof in [
            "x-user-id",
            "x_user_id",
            "X-User_Id",
            "x.user.id",
            "X.User-ID",
            "x_debug",
            "X.DEBUG",
        ] {
            let name = HeaderName::from_bytes(spoof.as_bytes()).expect("a header name");
            headers.append(name, HeaderValue::from_static("spoofed"));
        }
        headers.insert("x-user-ids", HeaderValue::from_static("kept"));
        headers.insert("x-userid", HeaderValue::from_static("kept"));
        apply(&t, None, &mut headers, &mut AddedFields::new()).expect("applied");
        let mut left: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("ascii")))
            .collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                ("x-user-id", "gateway"),
                ("x-user-ids", "kept"),
                ("x-userid", "kept"),
            ]
        );
    }

    #[test]
    fn a_property_is_visible_ascii_space_or_tab_inside_up_to_4_kib() {
        for plain in [
            "",
            "acme",
            "a b\tc",
            "~!\"#{}",
            &"x".repeat(MAX_PROPERTY_BYTES),
        ] {
            assert!(is_plain_property(plain), "{plain:?}");
        }
        for bad in [
            "café",
            "\u{7f}",
            "a\r\nb",
            "nul\0",
            "\u{2003}",
            " admin",
            "admin ",
            "\tadmin",
            "admin\t",
            " ",
            "  ",
            "\t",
            &"x".repeat(MAX_PROPERTY_BYTES + 1),
        ] {
            assert!(!is_plain_property(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_policy_that_sets_or_removes_a_gateway_field_has_the_last_word() {
        static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
        static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
        let t = transform(&["x-request-id"], &["Traceparent"]);
        let mut added = AddedFields::new();
        added.add(&X_REQUEST_ID, HeaderValue::from_static("made"));
        added.add(&TRACEPARENT, HeaderValue::from_static("made"));
        let mut headers = HeaderMap::new();
        apply(&t, None, &mut headers, &mut added).expect("applied");
        assert_eq!(added.iter().count(), 0);
        assert_eq!(headers["x-request-id"], "gateway");
        assert!(!headers.contains_key("traceparent"));
    }
}
