//! Choosing the API (longest base path on a segment boundary) and the
//! resource (method + template, most specific first) for a canonical path.

use std::sync::Arc;

use http::Method;

use crate::config::snapshot::{Api, Resource, Segment};
use crate::config::Snapshot;
use crate::path::CanonicalPath;

/// What a request matched: the API (borrowed from the snapshot: taking a
/// request's route counts no reference other threads count too), its
/// resource, and the path below the base path (the part forwarded to the
/// upstream).
#[derive(Debug, Clone)]
pub struct Route<'s> {
    pub api: &'s Arc<Api>,
    pub resource: usize,
    /// A path with a trailing slash whose two readings (with and without
    /// it) match different resources: the other one, which must allow the
    /// request too (upstreams read such a path either way).
    pub also: Option<usize>,
    pub rest: String,
}

impl<'s> Route<'s> {
    pub fn resource(&self) -> &Resource {
        &self.api.resources[self.resource]
    }

    /// The path's other reading ([`also`](Self::also)) as a route of its
    /// own, when it matched another resource.
    pub fn other_reading(&self) -> Option<Route<'s>> {
        self.also.map(|also| Route {
            api: self.api,
            resource: also,
            also: None,
            rest: String::new(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteProblem {
    #[error("no API has a base path for this path")]
    NoApi,
    #[error("no resource of API {api} matches this path")]
    NoResource { api: String },
    #[error("the resource does not allow this method")]
    MethodNotAllowed { api: String, allow: Vec<Method> },
    #[error("encoded slash in the path of API {api}, which does not allow them")]
    EncodedSlash { api: String },
    #[error("dot segments climb above the base path of API {api}")]
    AboveBasePath { api: String },
}

/// Matches a canonical path against the snapshot's APIs.
/// Path segments matched without an allocation.
const STACK_SEGMENTS: usize = 16;

pub fn route<'s>(
    snapshot: &'s Snapshot,
    method: &Method,
    path: &CanonicalPath,
) -> Result<Route<'s>, RouteProblem> {
    let api = snapshot.api_for(&path.path).ok_or(RouteProblem::NoApi)?;
    if path.encoded_slash && !api.allow_encoded_slashes {
        return Err(RouteProblem::EncodedSlash {
            api: api.name.clone(),
        });
    }
    if path
        .min_depth
        .is_some_and(|depth| depth < api.base_segments)
    {
        return Err(RouteProblem::AboveBasePath {
            api: api.name.clone(),
        });
    }
    let rest = &path.path[api.base_path.len()..];
    // The segments on the stack, unless there are very many of them.
    let mut stack = [""; STACK_SEGMENTS];
    let heap: Vec<&str>;
    let segments: &[&str] = match rest.strip_prefix('/') {
        Some(r) if !r.is_empty() || rest.len() > 1 => {
            let mut count = 0;
            for (slot, segment) in stack.iter_mut().zip(r.split('/')) {
                *slot = segment;
                count += 1;
            }
            if count == STACK_SEGMENTS && r.split('/').nth(STACK_SEGMENTS).is_some() {
                heap = r.split('/').collect();
                &heap
            } else {
                &stack[..count]
            }
        }
        _ => &[],
    };
    // A trailing slash matches as the path without it (many upstreams read
    // `/files/secret/` as `/files/secret`) and as written (a
    // directory-serving upstream reads `/files/secret/` as what
    // `/files/secret/{rest*}` protects): when the two readings match
    // different resources, the request must be allowed by both; the more
    // specific is its resource. A `{tail*}` may take the path as written
    // alone (`/files/`).
    let trimmed = match segments {
        [before @ .., ""] if !before.is_empty() => before,
        _ => segments,
    };
    // The other way round, where a `{tail*}` could take it: a path
    // without the slash is read with it too (`/admin` as `/admin/`, which
    // `/admin/{rest*}` protects), for an upstream that serves the two
    // alike. That reading counts only where it is the more specific, or
    // the tail of the other's template (what `/{page}` matches,
    // `/admin/{rest*}` must allow too, and `/{name}/{rest*}` what
    // `/{name}` matches; a literal `GET /admin` beside `GET /{rest*}`
    // needs no more than it says), and never matches alone.
    // Made only when read (a request of another API zeroes nothing).
    let slashed_stack: [&str; STACK_SEGMENTS + 1];
    let slashed_heap: Vec<&str>;
    let (shorter, longer, written_longer) = if trimmed.len() < segments.len() {
        (trimmed, segments, true)
    } else if api.tail_resources && !segments.is_empty() {
        let slashed: &[&str] = if segments.len() <= STACK_SEGMENTS {
            let mut stack = [""; STACK_SEGMENTS + 1];
            stack[..segments.len()].copy_from_slice(segments);
            slashed_stack = stack;
            &slashed_stack[..=segments.len()]
        } else {
            slashed_heap = segments.iter().copied().chain([""]).collect();
            &slashed_heap
        };
        (segments, slashed, false)
    } else {
        (segments, segments, true)
    };
    let for_method = |segments| {
        select(api, method, segments).or_else(|| {
            // RFC 9110 §9.3.2: HEAD is allowed wherever GET is.
            (method == Method::HEAD)
                .then(|| select(api, &Method::GET, segments))
                .flatten()
        })
    };
    let (resource, also) = match for_method(shorter) {
        Some(short_match) if shorter.len() < longer.len() => match for_method(longer) {
            Some(long_match) if long_match == short_match => (Some(long_match), None),
            Some(long_match) if more_specific(api, long_match, short_match) => {
                (Some(long_match), Some(short_match))
            }
            Some(long_match) if written_longer || tail_of(api, long_match, short_match) => {
                (Some(short_match), Some(long_match))
            }
            // Read with a slash it was not written with, less specific.
            Some(_) | None => (Some(short_match), None),
        },
        Some(short_match) => (Some(short_match), None),
        None if written_longer => (for_method(longer), None),
        None => (None, None),
    };
    match resource {
        Some(index) => Ok(Route {
            api,
            resource: index,
            also,
            rest: rest.to_owned(),
        }),
        None => {
            let mut allow: Vec<Method> = Vec::new();
            for resource in &api.resources {
                let template = &resource.template.segments;
                if !matches(template, trimmed) && !matches(template, segments) {
                    continue;
                }
                let method = &resource.method;
                // RFC 9110 §10.2.1: Allow lists what is served, HEAD included.
                let served: &[Method] = if method == Method::GET {
                    &[Method::GET, Method::HEAD]
                } else {
                    std::slice::from_ref(method)
                };
                for method in served {
                    if !allow.contains(method) {
                        allow.push(method.clone());
                    }
                }
            }
            if allow.is_empty() {
                Err(RouteProblem::NoResource {
                    api: api.name.clone(),
                })
            } else {
                Err(RouteProblem::MethodNotAllowed {
                    api: api.name.clone(),
                    allow,
                })
            }
        }
    }
}

/// The most specific resource with this method matching the segments:
/// compared segment by segment, a literal beats `{param}` beats `{tail*}`.
fn select(api: &Api, method: &Method, segments: &[&str]) -> Option<usize> {
    api.resources
        .iter()
        .enumerate()
        .filter(|(_, r)| r.method == *method && matches(&r.template.segments, segments))
        .min_by(|(_, a), (_, b)| specificity(a).cmp(specificity(b)))
        .map(|(index, _)| index)
}

/// A resource's template as ranks, segment by segment (a literal 0,
/// `{param}` 1, `{tail*}` 2): the lesser sequence is the more specific.
fn specificity(resource: &Resource) -> impl Iterator<Item = u8> + '_ {
    resource.template.segments.iter().map(|s| match s {
        Segment::Literal(_) => 0,
        Segment::Param(_) => 1,
        Segment::Tail(_) => 2,
    })
}

/// Whether resource `long`'s template is `short`'s with a `{tail*}` after
/// it (`/{name}/{rest*}` of `/{name}`).
fn tail_of(api: &Api, long: usize, short: usize) -> bool {
    let (long, short) = (
        &api.resources[long].template.segments,
        &api.resources[short].template.segments,
    );
    match long.split_last() {
        Some((Segment::Tail(_), head)) => {
            head.len() == short.len()
                && head.iter().zip(short).all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
        }
        _ => false,
    }
}

/// Whether resource `a` of `api` is strictly more specific than `b`.
fn more_specific(api: &Api, a: usize, b: usize) -> bool {
    let (a, b) = (&api.resources[a], &api.resources[b]);
    specificity(a).cmp(specificity(b)) == std::cmp::Ordering::Less
}

fn matches(template: &[Segment], segments: &[&str]) -> bool {
    let mut i = 0;
    for (position, part) in template.iter().enumerate() {
        match part {
            Segment::Tail(_) => return segments.len() > position,
            Segment::Literal(text) => {
                if segments.get(i) != Some(&text.as_str()) {
                    return false;
                }
            }
            Segment::Param(_) => match segments.get(i) {
                Some(value) if !value.is_empty() => {}
                _ => return false,
            },
        }
        i += 1;
    }
    i == segments.len()
}
