//! Parsing the two kinds of templates of the configuration: resource
//! templates (`GET /bookings/{id}`) and header value templates
//! (`tenant-${request.authorization.claims.tenant}`).

use http::{HeaderValue, Method};

use super::context::{self, Ctx};
use super::raw::{Scalar, S};
use super::snapshot::{Part, Segment, Template, ValueTemplate, Variable};
use crate::path;

pub const ALLOWED: &str = "literal text and ${request.authorization.clientId|userName|issuer|audience|scope|type|claims.NAME} (or ${request.oauth2Token.clientId|owner}), ${request.application.name}";

const VALUE_ALLOWED: &str = "visible ASCII text, spaces and tabs around the variables, no space or tab first or last (write a block scalar as `|-`)";

pub const RESOURCE_ALLOWED: &str =
    "\"METHOD /path\" with METHOD one of GET POST PUT PATCH DELETE HEAD OPTIONS, segments literal, {name} or a final {name*}";

/// Parses `${…}` variables out of a header value template.
pub fn parse(text: &str) -> Result<ValueTemplate, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{text}` has an unclosed ${{"))?;
        parts.push(Part::Var(variable(&after[..end])?));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(ValueTemplate { parts })
}

fn variable(name: &str) -> Result<Variable, String> {
    match name {
        "request.application.name" => return Ok(Variable::ApplicationName),
        "request.authorization.type" => return Ok(Variable::AuthorizationType),
        _ => {}
    }
    let field = name
        .strip_prefix("request.authorization.")
        .or_else(|| name.strip_prefix("request.oauth2Token."))
        .ok_or_else(|| format!("unknown variable `${{{name}}}`"))?;
    Ok(match field {
        "clientId" => Variable::ClientId,
        "userName" | "owner" => Variable::UserName,
        "issuer" => Variable::Issuer,
        "audience" => Variable::Audience,
        "scope" => Variable::Scope,
        _ => match field.strip_prefix("claims.") {
            Some(claim) if !claim.is_empty() => Variable::Claim(claim.to_owned()),
            _ => return Err(format!("unknown variable `${{{name}}}`")),
        },
    })
}

/// A header value template, or a finding at its position. Its literal
/// text is checked as a header value here: a line break (a YAML block
/// scalar `|` ends in one) would otherwise fail every request at run time.
pub(super) fn value_template(ctx: &mut Ctx, value: &S<Scalar>) -> Option<ValueTemplate> {
    let text = &value.value.0;
    let parsed = match parse(text) {
        Ok(parsed) => parsed,
        Err(problem) => {
            ctx.report.error(value.referenced, problem, ALLOWED);
            return None;
        }
    };
    // Portable text, and no space or tab at either end of the value,
    // which parsers strip and HTTP/2 forbids (a variable's value is
    // held to the same when a request renders it).
    let padding = context::is_padding;
    let last = parsed.parts.len().saturating_sub(1);
    let literal_ok = parsed.parts.iter().enumerate().all(|(i, part)| match part {
        Part::Text(literal) => {
            let bytes = literal.as_bytes();
            HeaderValue::from_str(literal).is_ok()
                && context::is_portable_text(bytes)
                && !(i == 0 && bytes.first().copied().is_some_and(padding))
                && !(i == last && bytes.last().copied().is_some_and(padding))
        }
        Part::Var(_) => true,
    });
    if !literal_ok {
        ctx.report.error(
            value.referenced,
            format!(
                "set_headers value `{}` is not a valid header value",
                text.escape_debug()
            ),
            VALUE_ALLOWED,
        );
        return None;
    }
    Some(parsed)
}

/// Parses `METHOD /path/{param}/{tail*}`.
pub fn resource(text: &str) -> Result<(Method, Template), String> {
    let (method, path) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| format!("resource `{text}` is not \"METHOD /path\""))?;
    let method = context::method(method)
        .ok_or_else(|| format!("resource `{text}`: `{method}` is not a supported method"))?;
    Ok((method, path_template(path.trim())?))
}

pub fn path_template(path: &str) -> Result<Template, String> {
    let Some(relative) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` does not start with /"));
    };
    let mut segments = Vec::new();
    if !relative.is_empty() {
        let parts: Vec<&str> = relative.split('/').collect();
        for (index, part) in parts.iter().enumerate() {
            let segment = segment(part, index + 1 == parts.len(), path)?;
            // One name, one value: `/orders/{id}/{id}` would bind `id`
            // twice and leave the reader guessing which one is used.
            if let Segment::Param(name) | Segment::Tail(name) = &segment {
                let repeated = segments
                    .iter()
                    .any(|s| matches!(s, Segment::Param(n) | Segment::Tail(n) if n == name));
                if repeated {
                    return Err(format!(
                        "path `{path}` names the parameter `{{{name}}}` twice"
                    ));
                }
            }
            segments.push(segment);
        }
    }
    Ok(Template {
        text: path.to_owned(),
        segments,
    })
}

fn segment(part: &str, last: bool, path: &str) -> Result<Segment, String> {
    if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        let (name, tail) = match inner.strip_suffix('*') {
            Some(name) => (name, true),
            None => (inner, false),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "path `{path}`: parameter `{part}` needs a name of letters, digits or _"
            ));
        }
        if tail && !last {
            return Err(format!("path `{path}`: `{part}` must be the last segment"));
        }
        return Ok(if tail {
            Segment::Tail(name.to_owned())
        } else {
            Segment::Param(name.to_owned())
        });
    }
    if part == "." || part == ".." {
        return Err(format!("path `{path}` has a dot segment"));
    }
    // The canonical request path never holds an empty segment (`//`) and
    // keeps `%2F`/`%5C` encoded: such a template could never match, or
    // would match what the upstream reads as another path.
    if part.is_empty() {
        return Err(format!("path `{path}` has an empty segment (`//`)"));
    }
    let lower = part.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(format!(
            "path `{path}`: segment `{part}` holds an encoded `/` or `\\`"
        ));
    }
    let valid = part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@%".contains(&b));
    if !valid || part.contains('{') || part.contains('}') {
        return Err(format!(
            "path `{path}`: segment `{part}` has characters a path cannot hold"
        ));
    }
    // Matched against canonical request paths, so held in that form too:
    // `%7Eroot` is `~root`, `caf%c3%a9` is `caf%C3%A9`, `%40me` is `@me`.
    let canonical = path::canonical_segment(part).ok_or_else(|| {
        format!("path `{path}`: segment `{part}` is not one segment a request path can hold")
    })?;
    Ok(Segment::Literal(canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_templates_mix_text_and_variables() {
        let t = parse("id-${request.authorization.clientId}/${request.oauth2Token.owner}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Text("id-".into()),
                Part::Var(Variable::ClientId),
                Part::Text("/".into()),
                Part::Var(Variable::UserName)
            ]
        );
        assert!(parse("${request.authorization.nope}").is_err());
        assert!(parse("${request.authorization.clientId").is_err());
    }

    #[test]
    fn resource_templates() {
        let (m, t) = resource("GET /bookings/{id}").unwrap();
        assert_eq!(m, Method::GET);
        assert_eq!(
            t.segments,
            vec![
                Segment::Literal("bookings".into()),
                Segment::Param("id".into())
            ]
        );
        assert!(resource("GET /a/{rest*}/b").is_err());
        assert!(resource("FETCH /a").is_err());
        assert!(resource("GET a").is_err());
        assert!(resource("GET /a/{}").is_err());
        assert!(resource("GET /a/../b").is_err());
    }

    #[test]
    fn repeated_names_empty_segments_and_encoded_separators_are_refused() {
        assert_eq!(
            resource("GET /orders/{id}/{id}").unwrap_err(),
            "path `/orders/{id}/{id}` names the parameter `{id}` twice"
        );
        assert!(resource("GET /orders/{id}/{id*}").is_err());
        assert_eq!(
            resource("GET /x//y").unwrap_err(),
            "path `/x//y` has an empty segment (`//`)"
        );
        assert!(resource("GET /x/").is_err());
        assert!(resource("GET /a%2Fb").is_err());
        assert!(resource("GET /a%5cb").is_err());
        assert!(resource("GET /").is_ok());
        assert!(resource("GET /a%20b/{id}/{rest*}").is_ok());
    }

    #[test]
    fn literals_are_held_in_the_form_request_paths_are_matched_in() {
        let literals = |text| {
            let (_, t) = resource(text).unwrap();
            t.segments
                .into_iter()
                .map(|s| match s {
                    Segment::Literal(text) => text,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(literals("GET /users/%7Eroot"), ["users", "~root"]);
        assert_eq!(literals("GET /files/caf%c3%a9"), ["files", "caf%C3%A9"]);
        assert_eq!(literals("GET /users/%40me/a%3ab"), ["users", "@me", "a:b"]);
        for refused in [
            "GET /a/%2e%2e",
            "GET /a/%2E",
            "GET /a/%00",
            "GET /a/%252F",
            "GET /a/%c3",
        ] {
            assert!(resource(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn literal_beats_param_beats_tail() {
        assert!(Segment::Literal("x".into()) < Segment::Param("x".into()));
        assert!(Segment::Param("x".into()) < Segment::Tail("x".into()));
    }
}
