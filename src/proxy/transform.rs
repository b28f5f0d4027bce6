//! Request transformation: incoming headers that a policy sets or removes
//! are stripped first (in every mix of `-` and `_`, so a client cannot
//! spoof them), then token properties are set from the principal. A
//! variable with no value sets no header; a value that is not a valid
//! header value refuses the request.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::auth::{Principal, TokenProblem};
use crate::config::snapshot::{Part, Transform, Variable};

pub fn apply(
    transform: &Transform,
    who: Option<&Principal>,
    headers: &mut HeaderMap,
) -> Result<(), TokenProblem> {
    if !transform.strip.is_empty() {
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| transform.strip.iter().any(|s| same_spelling(name, s)))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(name);
        }
    }
    for (name, template) in &transform.set {
        let Some(text) = render(&template.parts, who) else {
            continue;
        };
        let value = HeaderValue::from_str(&text).map_err(|_| TokenProblem::BadProperty)?;
        headers.append(name.clone(), value);
    }
    Ok(())
}

/// Equal names when every `-` and `_` is taken for the other, in any mix:
/// CGI-style servers read `X-Client_Id` as `X_CLIENT_ID`, like `X-Client-Id`.
/// (`HeaderName`s are lower case already.)
fn same_spelling(a: &HeaderName, b: &HeaderName) -> bool {
    let (a, b) = (a.as_str().as_bytes(), b.as_str().as_bytes());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (matches!(x, b'-' | b'_') && matches!(y, b'-' | b'_')))
}

/// The header text, or `None` when a variable has no value.
fn render(parts: &[Part], who: Option<&Principal>) -> Option<String> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Var(variable) => out.push_str(&value(variable, who?)?),
        }
    }
    Some(out)
}

fn value(variable: &Variable, who: &Principal) -> Option<String> {
    let joined = |items: &[String]| (!items.is_empty()).then(|| items.join(" "));
    match variable {
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

    #[test]
    fn dashes_and_underscores_are_one_spelling_in_any_mix() {
        let name = |text: &str| HeaderName::from_bytes(text.as_bytes()).expect("a header name");
        for spoof in ["x-client-id", "x_client_id", "x-client_id", "x_client-id"] {
            assert!(same_spelling(&name(spoof), &name("x-client-id")), "{spoof}");
        }
        assert!(!same_spelling(&name("x-client-ids"), &name("x-client-id")));
        assert!(!same_spelling(&name("x.client.id"), &name("x-client-id")));
    }
}
