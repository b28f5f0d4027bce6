//! Merging a downloaded document over the local file, on the raw model (so
//! the local entries keep their file positions for diagnostics). Downloaded
//! entries win: auth servers by `id`, aliases by `name`, scope mappings by
//! `(auth_server, scope)`, APIs by `(name, version)` (no `version` is the
//! default, `1.0`), applications by
//! `name`. `download_settings` takes the security settings and scope
//! mappings, `download_apis` the APIs and the applications that call them;
//! nothing else of the download is used. Of the APIs, scope mappings and
//! applications, only what the file's own `apis:` selects is taken, by the
//! rule the central's export filter applies (`selection`), whatever the
//! document holds, and of the mappings and applications only the parts
//! that name APIs the merged file serves. Pure: no I/O, no validation (the merged file is compiled like
//! any other), except the one rule only the merge can judge, since only it
//! knows which entry came from where: the downloaded APIs that name an
//! alias of the local file are returned ([`Borrowed`]; `trust` refuses
//! them unless the alias lends itself to downloaded APIs).

use std::collections::HashSet;

use super::selection::Selection;
use crate::config::raw::{self, Location, Scalar, S};
use crate::config::resolve;

/// Which parts of a download are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// Auth servers, aliases and scope mappings.
    pub settings: bool,
    /// APIs and applications.
    pub apis: bool,
}

impl Flags {
    /// The download flags of a file's `api_gateway:` section (read after
    /// the `MCGW_` overrides). A value that is not a boolean counts as false
    /// here; compiling the file reports it.
    pub fn of(file: &raw::File) -> Flags {
        let flag = |value: &Option<S<Scalar>>| {
            value
                .as_ref()
                .and_then(|v| resolve::boolean(&v.value.0))
                .unwrap_or(false)
        };
        file.api_gateway
            .as_ref()
            .map_or(Flags::default(), |gateway| Flags {
                settings: flag(&gateway.value.download_settings),
                apis: flag(&gateway.value.download_apis),
            })
    }

    pub fn any(self) -> bool {
        self.settings || self.apis
    }
}

/// The APIs a file's `api_gateway.apis` selects (all without the section).
pub fn selection(file: &raw::File) -> Selection {
    let names: Vec<String> = file.api_gateway.as_ref().map_or(Vec::new(), |gateway| {
        gateway.value.apis.iter().map(|a| a.value.clone()).collect()
    });
    Selection::of(&names)
}

/// A downloaded API's `outbound_auth.alias` that names an alias of the
/// local file without `allow_downloaded_apis: true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Borrowed {
    /// The API, as shown: `` `name` version ``.
    pub api: String,
    pub alias: String,
    /// Where the downloaded document names the alias.
    pub at: Location,
}

/// Merges what `selection` takes of `downloaded` into `local`; returns the
/// aliases the downloaded APIs taken borrow from the local file.
///
/// Scope mappings are merged after the APIs and keep only the API scopes of
/// APIs the merged file has: with `download_settings` alone, the central's
/// mappings for APIs this gateway does not serve are not an error here.
pub fn merge(
    local: &mut raw::File,
    downloaded: raw::File,
    flags: Flags,
    selection: &Selection,
) -> Vec<Borrowed> {
    let raw::File {
        security_settings,
        scope_mappings,
        apis,
        applications,
        ..
    } = downloaded;
    let mut borrowed = Vec::new();
    if flags.apis {
        let taken: Vec<S<raw::Api>> = apis
            .into_iter()
            .filter(|api| selection.takes(api.value.name.as_ref().map(|n| n.value.as_str())))
            .collect();
        // With the settings, the download's aliases replace the local ones
        // of the same name: those are the download's own.
        let own: &[S<raw::Alias>] = if flags.settings {
            &security_settings.aliases
        } else {
            &[]
        };
        borrowed = borrowed_aliases(&taken, &local.security_settings.aliases, own);
        upsert(&mut local.apis, taken, api_key);
    }
    let served = Selection::Only(
        local
            .apis
            .iter()
            .filter_map(|a| text(&a.value.name))
            .collect::<HashSet<String>>(),
    );
    if flags.apis {
        // An application keeps what names the APIs taken and served: a
        // subscription to an API this gateway does not serve would make
        // the merged file invalid.
        let applications = applications.into_iter().filter_map(|mut application| {
            let named = &mut application.value;
            selection.keep_api_scopes(&mut named.api_scopes, listed);
            served.keep_api_scopes(&mut named.api_scopes, listed);
            let kept = selection.keep_subscriptions(&mut named.apis, listed)
                && served.keep_subscriptions(&mut named.apis, listed);
            kept.then_some(application)
        });
        upsert(&mut local.applications, applications, |application| {
            text(&application.name)
        });
    }
    if flags.settings {
        upsert(
            &mut local.security_settings.auth_servers,
            security_settings.auth_servers,
            |server| text(&server.id),
        );
        upsert(
            &mut local.security_settings.aliases,
            security_settings.aliases,
            |alias| text(&alias.name),
        );
        let mappings = scope_mappings.into_iter().filter_map(|mut mapping| {
            let api_scopes = &mut mapping.value.api_scopes;
            let kept = selection.keep_api_scopes(api_scopes, listed)
                && served.keep_api_scopes(api_scopes, listed);
            kept.then_some(mapping)
        });
        upsert(&mut local.scope_mappings, mappings, |mapping| {
            (text(&mapping.auth_server), text(&mapping.scope))
        });
    }
    borrowed
}

/// The aliases of `local` that `apis` name and `own` (the download's
/// aliases merged) does not define, unless they lend themselves. An alias
/// defined nowhere is left to compiling, which reports it.
fn borrowed_aliases(
    apis: &[S<raw::Api>],
    local: &[S<raw::Alias>],
    own: &[S<raw::Alias>],
) -> Vec<Borrowed> {
    let named = |list: &'_ [S<raw::Alias>], name: &str| -> Option<bool> {
        list.iter()
            .find(|a| a.value.name.as_ref().is_some_and(|n| n.value == name))
            .map(|a| lends(&a.value))
    };
    apis.iter()
        .filter_map(|api| {
            let outbound = api.value.policies.outbound_auth.as_ref()?;
            let alias = outbound.value.alias.as_ref()?;
            if named(own, &alias.value).is_some() {
                return None;
            }
            // Defined nowhere: compiling says so.
            if named(local, &alias.value)? {
                return None;
            }
            let (name, version) = api_key(&api.value);
            Some(Borrowed {
                api: format!("`{}` {version}", name.unwrap_or_default()),
                alias: alias.value.clone(),
                at: alias.referenced,
            })
        })
        .collect()
}

/// Whether an alias lends its credentials to downloaded APIs. A value that
/// is not a boolean counts as false here; compiling the file reports it.
fn lends(alias: &raw::Alias) -> bool {
    alias
        .allow_downloaded_apis
        .as_ref()
        .and_then(|v| resolve::boolean(&v.value.0))
        .unwrap_or(false)
}

/// Replaces the local entry with the same key in place, or appends.
fn upsert<T, K: PartialEq>(
    local: &mut Vec<S<T>>,
    downloaded: impl IntoIterator<Item = S<T>>,
    key: impl Fn(&T) -> K,
) {
    for entry in downloaded {
        let wanted = key(&entry.value);
        match local.iter().position(|l| key(&l.value) == wanted) {
            Some(index) => local[index] = entry,
            None => local.push(entry),
        }
    }
}

fn listed(entry: &S<String>) -> Option<&str> {
    Some(&entry.value)
}

fn text(value: &Option<S<String>>) -> Option<String> {
    value.as_ref().map(|v| v.value.clone())
}

/// An API's name and version as the compiler reads them: one without
/// `version` is the same API as one with the default version.
fn api_key(api: &raw::Api) -> (Option<String>, String) {
    (text(&api.name), api.version_or_default())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load;

    fn parse(yaml: &str) -> raw::File {
        load::parse(Path::new("test.yaml"), yaml)
            .expect("test YAML parses")
            .0
    }

    const LOCAL: &str = r#"
security_settings:
  auth_servers:
  - { id: idp, localIntrospectionConfig: { issuer: "http://local" } }
  - { id: only-local, localIntrospectionConfig: { issuer: "http://only-local" } }
  aliases:
  - { name: backend, username: local-user, password: x }
scope_mappings:
- { auth_server: idp, scope: view, api_scopes: ["Local:View"] }
apis:
- { name: Local, version: "1.0", base_path: /local, upstream: { echo: true } }
- { name: Shared, version: "1.0", base_path: /shared-local, upstream: { echo: true } }
"#;

    const DOWNLOADED: &str = r#"
security_settings:
  auth_servers:
  - { id: idp, localIntrospectionConfig: { issuer: "http://central" } }
  - { id: central-only, localIntrospectionConfig: { issuer: "http://c" } }
  aliases:
  - { name: backend, username: central-user, password: y }
scope_mappings:
- { auth_server: idp, scope: view, api_scopes: ["Shared:View", "Remote:View"] }
- { auth_server: idp, scope: book, api_scopes: ["Remote:Book"] }
apis:
- { name: Shared, version: "1.0", base_path: /shared, upstream: { echo: true } }
- { name: Shared, version: "2.0", base_path: /shared2, upstream: { echo: true } }
- { name: Remote, version: "1.0", base_path: /remote, upstream: { echo: true } }
"#;

    const BOTH: Flags = Flags {
        settings: true,
        apis: true,
    };

    fn issuers(file: &raw::File) -> Vec<(String, String)> {
        file.security_settings
            .auth_servers
            .iter()
            .map(|s| {
                let issuer = s.value.local_introspection.as_ref().expect("local");
                let issuer = issuer.value.issuer.as_ref().expect("issuer");
                (text(&s.value.id).expect("id"), issuer.value.0.clone())
            })
            .collect()
    }

    fn apis(file: &raw::File) -> Vec<(String, String, String)> {
        file.apis
            .iter()
            .map(|a| {
                let (name, version) = api_key(&a.value);
                let base = text(&a.value.base_path).unwrap_or_default();
                (name.unwrap_or_default(), version, base)
            })
            .collect()
    }

    fn mappings(file: &raw::File) -> Vec<(String, Vec<String>)> {
        file.scope_mappings
            .iter()
            .map(|m| {
                let scopes = m.value.api_scopes.iter().map(|s| s.value.clone());
                (text(&m.value.scope).unwrap_or_default(), scopes.collect())
            })
            .collect()
    }

    #[test]
    fn auth_servers_merge_by_id_and_downloaded_wins() {
        let mut local = parse(LOCAL);
        merge(&mut local, parse(DOWNLOADED), BOTH, &Selection::All);
        assert_eq!(
            issuers(&local),
            [
                ("idp".to_owned(), "http://central".to_owned()),
                ("only-local".to_owned(), "http://only-local".to_owned()),
                ("central-only".to_owned(), "http://c".to_owned()),
            ]
        );
    }

    #[test]
    fn aliases_merge_by_name() {
        let mut local = parse(LOCAL);
        merge(&mut local, parse(DOWNLOADED), BOTH, &Selection::All);
        let aliases = &local.security_settings.aliases;
        assert_eq!(aliases.len(), 1);
        let user = aliases[0].value.username.as_ref().expect("username");
        assert_eq!(user.value.0, "central-user");
    }

    #[test]
    fn apis_merge_by_name_and_version() {
        let mut local = parse(LOCAL);
        merge(&mut local, parse(DOWNLOADED), BOTH, &Selection::All);
        let list = apis(&local);
        let key = |n: &str, v: &str, b: &str| (n.to_owned(), v.to_owned(), b.to_owned());
        assert_eq!(
            list,
            [
                key("Local", "1.0", "/local"),
                key("Shared", "1.0", "/shared"),
                key("Shared", "2.0", "/shared2"),
                key("Remote", "1.0", "/remote"),
            ]
        );
    }

    /// An API without `version` has the default one: a download that
    /// writes it replaces the local API, not adds a second one.
    #[test]
    fn an_api_without_a_version_is_the_same_as_one_with_the_default() {
        let mut local = parse(
            "apis:\n- { name: Shared, base_path: /shared-local, upstream: { echo: true } }\n",
        );
        merge(
            &mut local,
            parse(DOWNLOADED),
            BOTH,
            &Selection::of(&["Shared".to_owned()]),
        );
        let key = |n: &str, v: &str, b: &str| (n.to_owned(), v.to_owned(), b.to_owned());
        assert_eq!(
            apis(&local),
            [
                key("Shared", "1.0", "/shared"),
                key("Shared", "2.0", "/shared2")
            ]
        );
        let mut local = parse(LOCAL);
        let unversioned =
            "apis:\n- { name: Local, base_path: /downloaded, upstream: { echo: true } }\n";
        merge(&mut local, parse(unversioned), BOTH, &Selection::All);
        assert_eq!(apis(&local)[0], key("Local", "1.0", "/downloaded"));
        assert_eq!(apis(&local).len(), 2);
    }

    #[test]
    fn scope_mappings_merge_by_auth_server_and_scope() {
        let mut local = parse(LOCAL);
        merge(&mut local, parse(DOWNLOADED), BOTH, &Selection::All);
        let view = vec!["Shared:View".to_owned(), "Remote:View".to_owned()];
        assert_eq!(
            mappings(&local),
            [
                ("view".to_owned(), view),
                ("book".to_owned(), vec!["Remote:Book".to_owned()]),
            ]
        );
    }

    #[test]
    fn applications_merge_by_name_with_what_names_served_apis_only() {
        let mut local = parse(&format!(
            "{LOCAL}applications:\n- {{ name: Mine, apis: [Local] }}\n- {{ name: Partner, apis: [Local] }}\n"
        ));
        let downloaded = parse(&format!(
            r#"{DOWNLOADED}
applications:
- {{ name: Partner, apis: ["Remote:1.0", Gone], api_scopes: ["Remote:Book", "Gone:View"] }}
- {{ name: Elsewhere, apis: [Gone] }}
- {{ name: Anywhere, client_ids: [c] }}
"#
        ));
        merge(&mut local, downloaded, BOTH, &Selection::All);
        let shown: Vec<(String, Vec<String>, Vec<String>)> = local
            .applications
            .iter()
            .map(|a| {
                let list = |l: &[S<String>]| l.iter().map(|e| e.value.clone()).collect();
                let name = text(&a.value.name).unwrap_or_default();
                (name, list(&a.value.apis), list(&a.value.api_scopes))
            })
            .collect();
        let entry = |name: &str, apis: &[&str], scopes: &[&str]| {
            let owned = |l: &[&str]| l.iter().map(|e| (*e).to_owned()).collect();
            (name.to_owned(), owned(apis), owned(scopes))
        };
        assert_eq!(
            shown,
            [
                entry("Mine", &["Local"], &[]),
                entry("Partner", &["Remote:1.0"], &["Remote:Book"]),
                entry("Anywhere", &[], &[]),
            ]
        );
        // Without `download_apis`, the applications are the file's own.
        let mut local = parse(&format!(
            "{LOCAL}applications:\n- {{ name: Mine, apis: [Local] }}\n"
        ));
        let downloaded = parse(&format!(
            "{DOWNLOADED}applications:\n- {{ name: Anywhere }}\n"
        ));
        let settings = Flags {
            settings: true,
            apis: false,
        };
        merge(&mut local, downloaded, settings, &Selection::All);
        assert_eq!(local.applications.len(), 1);
    }

    #[test]
    fn settings_alone_leave_apis_and_drop_mappings_of_unserved_apis() {
        let mut local = parse(LOCAL);
        let flags = Flags {
            settings: true,
            apis: false,
        };
        merge(&mut local, parse(DOWNLOADED), flags, &Selection::All);
        assert_eq!(apis(&local).len(), 2);
        assert_eq!(issuers(&local)[0].1, "http://central");
        assert_eq!(
            mappings(&local),
            [("view".to_owned(), vec!["Shared:View".to_owned()])]
        );
    }

    #[test]
    fn apis_alone_leave_settings() {
        let mut local = parse(LOCAL);
        let flags = Flags {
            settings: false,
            apis: true,
        };
        merge(&mut local, parse(DOWNLOADED), flags, &Selection::All);
        assert_eq!(apis(&local).len(), 4);
        assert_eq!(issuers(&local)[0].1, "http://local");
        assert_eq!(
            mappings(&local),
            [("view".to_owned(), vec!["Local:View".to_owned()])]
        );
    }

    #[test]
    fn no_flags_merge_nothing() {
        let mut local = parse(LOCAL);
        merge(
            &mut local,
            parse(DOWNLOADED),
            Flags::default(),
            &Selection::All,
        );
        assert_eq!(apis(&local).len(), 2);
        assert_eq!(issuers(&local).len(), 2);
    }

    #[test]
    fn only_the_selected_apis_and_their_mappings_are_taken() {
        let mut local = parse(LOCAL);
        let selection = Selection::of(&["Shared".to_owned()]);
        merge(&mut local, parse(DOWNLOADED), BOTH, &selection);
        let key = |n: &str, v: &str, b: &str| (n.to_owned(), v.to_owned(), b.to_owned());
        assert_eq!(
            apis(&local),
            [
                key("Local", "1.0", "/local"),
                key("Shared", "1.0", "/shared"),
                key("Shared", "2.0", "/shared2"),
            ],
            "the local file's own APIs stay; of the download, only Shared"
        );
        assert_eq!(
            mappings(&local),
            [("view".to_owned(), vec!["Shared:View".to_owned()])]
        );
    }

    /// `Orders:orders:read` is the scope `orders:read` of `Orders`: the
    /// mapping and the application keep it where `Orders` is taken.
    #[test]
    fn an_api_scope_whose_scope_name_holds_a_colon_stays_with_its_api() {
        let downloaded = r#"
security_settings: { auth_servers: [{ id: idp }] }
scope_mappings:
- { auth_server: idp, scope: ordering, api_scopes: ["Orders:orders:read"] }
apis:
- { name: Orders, version: "1.0", base_path: /orders, upstream: { echo: true } }
applications:
- { name: shop, apis: [Orders], api_scopes: ["Orders:orders:read"] }
"#;
        let mut local = parse("apis: []\n");
        let orders = Selection::of(&["Orders".to_owned()]);
        merge(&mut local, parse(downloaded), BOTH, &orders);
        let ordering = vec!["Orders:orders:read".to_owned()];
        assert_eq!(mappings(&local), [("ordering".to_owned(), ordering)]);
        let application = &local.applications[0].value;
        let scopes: Vec<&str> = application
            .api_scopes
            .iter()
            .map(|s| s.value.as_str())
            .collect();
        assert_eq!(scopes, ["Orders:orders:read"]);
    }

    #[test]
    fn the_selection_comes_from_the_api_gateway_section() {
        let file = parse("api_gateway: { url: x, apis: [One, \"Time travels\"] }\n");
        assert_eq!(
            selection(&file),
            Selection::of(&["One".to_owned(), "Time travels".to_owned()])
        );
        assert_eq!(
            selection(&parse("api_gateway: { url: x }\n")),
            Selection::All
        );
        assert_eq!(selection(&parse("ports: {}\n")), Selection::All);
    }

    const LENDING: &str = r#"
security_settings:
  aliases:
  - { name: kept, username: local-user, password: x }
  - { name: lent, username: local-user, password: x, allow_downloaded_apis: true }
"#;

    /// Downloaded APIs naming the aliases `names`, each with a dummy alias of its own.
    fn naming(names: &[&str]) -> String {
        let mut text = String::from("security_settings:\n  aliases:\n");
        for name in names {
            text.push_str(&format!(
                "  - {{ name: {name}, username: u, password: p }}\n"
            ));
        }
        text.push_str("apis:\n");
        for (index, name) in names.iter().enumerate() {
            text.push_str(&format!(
                "- {{ name: Api{index}, version: \"1.0\", policies: {{ outbound_auth: {{ alias: {name} }} }} }}\n"
            ));
        }
        text
    }

    #[test]
    fn a_downloaded_api_borrows_a_local_alias_only_where_it_is_lent() {
        let apis_only = Flags {
            settings: false,
            apis: true,
        };
        let mut local = parse(LENDING);
        let borrowed = merge(
            &mut local,
            parse(&naming(&["kept", "lent", "undefined"])),
            apis_only,
            &Selection::All,
        );
        assert_eq!(borrowed.len(), 1, "{borrowed:?}");
        assert_eq!(borrowed[0].api, "`Api0` 1.0");
        assert_eq!(borrowed[0].alias, "kept");
        assert_eq!(
            (borrowed[0].at.line(), borrowed[0].at.column()),
            (7, 69),
            "where the document names it"
        );
    }

    #[test]
    fn with_the_settings_a_downloaded_api_uses_the_downloads_own_alias() {
        let mut local = parse(LENDING);
        let borrowed = merge(&mut local, parse(&naming(&["kept"])), BOTH, &Selection::All);
        assert_eq!(borrowed, []);
        let kept = &local.security_settings.aliases[0].value;
        assert_eq!(kept.username.as_ref().expect("username").value.0, "u");
    }

    #[test]
    fn an_api_not_taken_borrows_nothing() {
        let mut local = parse(LENDING);
        let apis_only = Flags {
            settings: false,
            apis: true,
        };
        let selection = Selection::of(&["Other".to_owned()]);
        let borrowed = merge(&mut local, parse(&naming(&["kept"])), apis_only, &selection);
        assert_eq!(borrowed, []);
    }

    #[test]
    fn flags_come_from_the_api_gateway_section() {
        let file = parse("api_gateway: { url: x, download_apis: true }\n");
        assert_eq!(
            Flags::of(&file),
            Flags {
                settings: false,
                apis: true
            }
        );
        assert_eq!(Flags::of(&parse("ports: {}\n")), Flags::default());
    }
}
