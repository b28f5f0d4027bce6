//! APIs whose base paths nest (`/travels` and `/travels/admin`): a request
//! goes to the API with the longest base path, so a resource of the outer
//! API under the inner one's base path is answered by the inner API, with
//! its authentication, scopes and upstream. A resource that can match only
//! such paths would never be reached and reads as protected while another
//! API serves its paths: an error. One that matches some of them (a
//! `{param}` or `{rest*}` there) is a warning. Nothing here changes routing.

use super::context::Ctx;
use super::raw::{self, S};
use super::snapshot::Segment;
use super::template;

/// An API as placed: its canonical base path (`""` for `/`) and its entry.
pub struct Placed<'a> {
    pub base_path: &'a str,
    pub entry: &'a S<raw::Api>,
}

/// How much of a resource's paths lie under a nested base path.
#[derive(Debug, PartialEq, Eq)]
enum Overlap {
    None,
    Some,
    All,
}

/// Reports the resources of each API that an API nested under it takes.
pub fn check(ctx: &mut Ctx, apis: &[Placed]) {
    for outer in apis {
        for inner in apis {
            let Some(below) = inner
                .base_path
                .strip_prefix(outer.base_path)
                .and_then(|rest| rest.strip_prefix('/'))
            else {
                continue;
            };
            let below: Vec<&str> = below.split('/').collect();
            report_taken(ctx, outer, inner, &below);
        }
    }
}

fn report_taken(ctx: &mut Ctx, outer: &Placed, inner: &Placed, below: &[&str]) {
    let api = |placed: &Placed| {
        placed
            .entry
            .value
            .name
            .as_ref()
            .map_or_else(String::new, |n| n.value.clone())
    };
    let raw = &outer.entry.value;
    let written = raw
        .scopes
        .iter()
        .flat_map(|scope| scope.value.resources.iter())
        .chain(raw.resources.iter());
    for text in written {
        let Ok((_, parsed)) = template::resource(&text.value) else {
            continue;
        };
        let inner_base = if inner.base_path.is_empty() {
            "/"
        } else {
            inner.base_path
        };
        match overlap(&parsed.segments, below) {
            Overlap::None => {}
            Overlap::All => ctx.report.error(
                text.referenced,
                format!(
                    "resource `{}` of API `{}` is never reached: its paths are under base path `{inner_base}` of API `{}`, which answers them",
                    text.value.trim(),
                    api(outer),
                    api(inner)
                ),
                "a resource outside the base paths of the other APIs, or declared in the API that answers it",
            ),
            Overlap::Some => ctx.report.warning(
                text.referenced,
                format!(
                    "resource `{}` of API `{}`: its paths under base path `{inner_base}` are answered by API `{}`, not by it",
                    text.value.trim(),
                    api(outer),
                    api(inner)
                ),
            ),
        }
    }
}

/// Whether the paths a template matches start with the segments `below`.
fn overlap(segments: &[Segment], below: &[&str]) -> Overlap {
    let mut all = true;
    for (i, wanted) in below.iter().enumerate() {
        match segments.get(i) {
            None => return Overlap::None,
            Some(Segment::Literal(text)) if text == wanted => {}
            Some(Segment::Literal(_)) => return Overlap::None,
            Some(Segment::Param(_)) => all = false,
            Some(Segment::Tail(_)) => return Overlap::Some,
        }
    }
    if all {
        Overlap::All
    } else {
        Overlap::Some
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<Segment> {
        template::resource(&format!("GET {path}"))
            .expect("a resource")
            .1
            .segments
    }

    #[test]
    fn a_resource_is_taken_as_far_as_its_segments_can_match() {
        let below = ["admin"];
        assert_eq!(overlap(&segments("/admin/users"), &below), Overlap::All);
        assert_eq!(overlap(&segments("/admin"), &below), Overlap::All);
        assert_eq!(
            overlap(&segments("/{section}/users"), &below),
            Overlap::Some
        );
        assert_eq!(overlap(&segments("/{rest*}"), &below), Overlap::Some);
        assert_eq!(overlap(&segments("/bookings"), &below), Overlap::None);
        assert_eq!(overlap(&segments("/"), &below), Overlap::None);
        assert_eq!(
            overlap(&segments("/admin/users"), &["admin", "users", "x"]),
            Overlap::None
        );
        assert_eq!(
            overlap(&segments("/admin/{rest*}"), &["admin", "users"]),
            Overlap::Some
        );
    }
}
