//! Which APIs a download takes: those `api_gateway.apis` names (`?apis=A,B`
//! on the export), all when it names none. One rule for both ends: the
//! central filters its export by it, and a downstream filters what it
//! downloaded (or cached) by its own `apis:` again, whatever it was sent.
//! A scope mapping keeps the API scopes (`API name:scope`) of the APIs
//! taken, read as the compiler reads them (an API or a scope name may hold
//! a `:`); one left with none is dropped, one that named none is kept. An
//! application keeps its subscriptions (`name`, `name:version`) to APIs
//! taken; one left with none is dropped, one that had none is kept.

use std::collections::HashSet;

use crate::config::application_compile;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Only(HashSet<String>),
}

impl Selection {
    /// The APIs `names` names; all when it is empty.
    pub fn of(names: &[String]) -> Selection {
        if names.is_empty() {
            Selection::All
        } else {
            Selection::Only(names.iter().cloned().collect())
        }
    }

    /// Whether the API named `name` is taken (an API without a name is
    /// taken only by `All`).
    pub fn takes(&self, name: Option<&str>) -> bool {
        match self {
            Selection::All => true,
            Selection::Only(names) => name.is_some_and(|name| names.contains(name)),
        }
    }

    /// Keeps in a scope mapping's `api_scopes` (`API:scope`) those of APIs
    /// taken (`text` reads one); false when the mapping is to be dropped.
    pub fn keep_api_scopes<T>(
        &self,
        api_scopes: &mut Vec<T>,
        text: impl Fn(&T) -> Option<&str>,
    ) -> bool {
        self.keep(api_scopes, text, |api_scope| {
            named_apis(api_scope).any(|api| {
                self.takes(Some(api)) && application_compile::scope_of(api_scope, api).is_some()
            })
        })
    }

    /// Keeps in an application's subscriptions (`name` or
    /// `name:version`, `text` reads one) those to APIs taken; false when
    /// the application is to be dropped (it subscribed, to none taken).
    pub fn keep_subscriptions<T>(
        &self,
        apis: &mut Vec<T>,
        text: impl Fn(&T) -> Option<&str>,
    ) -> bool {
        self.keep(apis, text, |named| {
            self.takes(Some(named)) || named_apis(named).any(|name| self.takes(Some(name)))
        })
    }

    /// Keeps the entries of `list` whose text `names_taken` accepts; false
    /// when it named APIs and none is left. `All` keeps everything.
    fn keep<T>(
        &self,
        list: &mut Vec<T>,
        text: impl Fn(&T) -> Option<&str>,
        names_taken: impl Fn(&str) -> bool,
    ) -> bool {
        if *self == Selection::All || list.is_empty() {
            return true;
        }
        list.retain(|entry| text(entry).is_some_and(&names_taken));
        !list.is_empty()
    }
}

/// The API names `text` (`API:scope`, or a subscription `name:version`)
/// may start with: what comes before each of its colons. An API name or a
/// scope name may hold a `:` too (`Orders:orders:read` is the scope
/// `orders:read` of `Orders`), so the text is never split at one colon: as
/// the compiler does (`application_compile::scope_of`), a reference names
/// an API when it starts with the API's name and a colon.
fn named_apis(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices(':').map(|(at, _)| &text[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn no_names_take_every_api() {
        let all = Selection::of(&[]);
        assert!(all.takes(Some("Any")) && all.takes(None));
        let mut scopes = names(&["Any:View", "malformed"]);
        assert!(all.keep_api_scopes(&mut scopes, |s| Some(s.as_str())));
        assert_eq!(scopes.len(), 2);
    }

    #[test]
    fn named_apis_keep_their_api_scopes_only() {
        let one = Selection::of(&names(&["One", "Time travels"]));
        assert!(one.takes(Some("One")) && !one.takes(Some("Two")) && !one.takes(None));
        let mut scopes = names(&["One:View", "Two:View", "Time travels:Book", "bare"]);
        assert!(one.keep_api_scopes(&mut scopes, |s| Some(s.as_str())));
        assert_eq!(scopes, ["One:View", "Time travels:Book"]);
        let mut others = names(&["Two:View"]);
        assert!(!one.keep_api_scopes(&mut others, |s| Some(s.as_str())));
        let mut none: Vec<String> = Vec::new();
        assert!(one.keep_api_scopes(&mut none, |s| Some(s.as_str())));
    }

    #[test]
    fn an_api_scope_is_read_at_the_colon_after_an_api_name() {
        let orders = Selection::of(&names(&["Orders"]));
        let mut scopes = names(&["Orders:orders:read", "Other:orders:read", "orders:read"]);
        assert!(orders.keep_api_scopes(&mut scopes, |s| Some(s.as_str())));
        assert_eq!(scopes, ["Orders:orders:read"]);
        let colon = Selection::of(&names(&["Orders:v2"]));
        let mut scopes = names(&["Orders:v2:Read", "Orders:Read"]);
        assert!(colon.keep_api_scopes(&mut scopes, |s| Some(s.as_str())));
        assert_eq!(scopes, ["Orders:v2:Read"]);
        let mut apis = names(&["Orders:v2", "Orders:v2:1.0", "Orders:1.0"]);
        assert!(colon.keep_subscriptions(&mut apis, |s| Some(s.as_str())));
        assert_eq!(apis, ["Orders:v2", "Orders:v2:1.0"]);
    }

    #[test]
    fn named_apis_keep_the_subscriptions_to_them_by_name_or_version() {
        let one = Selection::of(&names(&["One", "Time travels"]));
        let mut apis = names(&["One:2.0", "Two", "Time travels", "Two:1.0"]);
        assert!(one.keep_subscriptions(&mut apis, |s| Some(s.as_str())));
        assert_eq!(apis, ["One:2.0", "Time travels"]);
        let mut others = names(&["Two"]);
        assert!(!one.keep_subscriptions(&mut others, |s| Some(s.as_str())));
        let mut none: Vec<String> = Vec::new();
        assert!(one.keep_subscriptions(&mut none, |s| Some(s.as_str())));
        let mut all = names(&["Two"]);
        assert!(Selection::All.keep_subscriptions(&mut all, |s| Some(s.as_str())));
        assert_eq!(all, ["Two"]);
    }
}
