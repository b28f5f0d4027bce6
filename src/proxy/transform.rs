//! Request transformation: incoming headers that a policy sets or removes
//! are stripped first (in every `-`/`_` spelling, so a client cannot spoof
//! them), then token properties are set from the principal. A variable with
//! no value sets no header; a value that is not a valid header value
//! refuses the request.

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::auth::{Principal, TokenProblem};
use crate::config::snapshot::{Part, Transform, Variable};

pub fn apply(
    transform: &Transform,
    who: Option<&Principal>,
    headers: &mut HeaderMap,
) -> Result<(), TokenProblem> {
    for name in &transform.strip {
        headers.remove(name);
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
