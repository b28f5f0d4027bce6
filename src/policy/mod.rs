//! Policy: pure, synchronous decisions over a snapshot. `path` canonicalises
//! once, `route` picks the API and resource, `scope` authorizes a principal,
//! `decide` combines them into the verdict `explain` prints.

pub mod decide;
pub mod path;
pub mod route;
pub mod scope;

pub use decide::{decide, decide_for, Caller, Outcome, Verdict};
pub use path::{canonicalize, CanonicalPath, PathProblem};
pub use route::{route, Route, RouteProblem};
pub use scope::{authorize, Denied, Grant, InsufficientScope};
