//! Policy: pure, synchronous decisions over a snapshot. The path
//! canonicalised once ([`crate::path`]), `route` picks the API and
//! resource, `scope` authorizes a principal, `decide` combines them into
//! the verdict `explain` prints.

pub mod decide;
pub mod route;
pub mod scope;

pub use crate::path::{canonicalize, CanonicalPath, PathProblem};
pub use decide::{decide, decide_for, Caller, OtherReading, Outcome, Verdict};
pub use route::{route, Route, RouteProblem};
pub use scope::{authorize, Denied, Grant, InsufficientScope};
