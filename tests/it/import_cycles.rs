//! The import graph of `src/` has no loop: no file imports, directly or
//! through others, a file that imports it back. Edges are read from the
//! text, file by file: `use` trees and paths written inline
//! (`crate::a::b(..)`, `super::x`, `self::x`). A path names the file that
//! defines the item: the deepest file module it reaches, or, when that
//! module re-exports the item (`pub use swap::Source`), the file it comes
//! from. A module naming its own submodules (`pub use child::Item`,
//! `child::f()`) is composition, not an import, so a child may use what
//! its parent defines; a loop through any other file is found. Comments
//! and literals are blanked first; a `super::` inside an inline
//! `mod tests` is the file itself. `main.rs` is the binary's root and sees
//! the library from outside. The top-level modules also keep to the floors
//! of `src/lib.rs`'s module map ([`FLOORS`]): each uses only lower ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path (`config::snapshot`) → its source text.
type Files = BTreeMap<String, String>;
/// A module path → the module paths of the files it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn src_has_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Files::new();
    read_tree(&src, &src, &mut files);
    assert!(files.len() > 50, "src/ read: {} files", files.len());
    let graph = graph(&files);
    assert!(
        graph["gateway"].contains("proxy"),
        "edges are read: {:?}",
        graph["gateway"]
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import loop in src/: {}", cycle.join(" → "));
    }
}

#[test]
fn a_loop_through_two_files_is_found() {
    let files = files(&[
        ("", "pub mod a; pub mod b;"),
        ("a", "use crate::b::Thing;\npub struct Other;"),
        (
            "b",
            "pub struct Thing;\nfn f() -> crate::a::Other { todo!() }",
        ),
    ]);
    let cycle = find_cycle(&graph(&files)).expect("a loop");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
    assert_eq!(cycle.first(), cycle.last());
}

#[test]
fn a_module_naming_its_own_children_imports_nothing() {
    let files = files(&[
        ("", "pub mod r;"),
        (
            "r",
            "pub mod watcher;\npub struct State;\npub fn f() { watcher::run() }",
        ),
        ("r::watcher", "use super::State;\npub fn run() {}"),
    ]);
    let graph = graph(&files);
    assert_eq!(graph["r"], BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn a_loop_through_a_higher_module_is_found() {
    let files = files(&[
        ("", "pub mod g; pub mod r;"),
        (
            "g",
            "pub struct State;\npub fn start() { crate::r::watcher::run() }",
        ),
        ("r", "pub mod watcher;"),
        ("r::watcher", "use crate::g::State;\npub fn run() {}"),
    ]);
    let cycle = find_cycle(&graph(&files)).expect("a loop");
    assert_eq!(cycle, ["g", "r::watcher", "g"]);
}

#[test]
fn a_reexport_names_the_file_that_defines_the_item() {
    let files = files(&[
        ("", "pub mod r;"),
        (
            "r",
            "pub mod swap;\npub mod watcher;\npub use swap::Source;\npub use watcher::Watcher;",
        ),
        ("r::swap", "pub enum Source {}"),
        ("r::watcher", "use super::Source;\npub struct Watcher;"),
    ]);
    let graph = graph(&files);
    assert!(graph["r::watcher"].contains("r::swap"), "{graph:?}");
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn comments_strings_and_test_modules_make_no_edges() {
    let files = files(&[
        ("", "pub mod a; pub mod b;"),
        ("a", "use crate::b::Thing;\npub fn f() {}"),
        (
            "b",
            "// crate::a::f\n/* crate::a::f */\npub struct Thing;\n\
             const S: &str = \"crate::a::f\";\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::Thing;\n}",
        ),
    ]);
    let graph = graph(&files);
    assert_eq!(graph["b"], BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn grouped_use_trees_are_expanded() {
    let files = files(&[
        ("", "pub mod c; pub mod d;"),
        ("c", "pub mod x; pub mod y;"),
        ("c::x", ""),
        ("c::y", ""),
        ("d", "use crate::c::{self, x::A, y::{B, C}};"),
    ]);
    let graph = graph(&files);
    let edges: Vec<&str> = graph["d"].iter().map(String::as_str).collect();
    assert_eq!(edges, ["c", "c::x", "c::y"]);
}

fn files(list: &[(&str, &str)]) -> Files {
    list.iter()
        .map(|(module, text)| ((*module).to_owned(), (*text).to_owned()))
        .collect()
}

/// Every `.rs` file under `dir`, by module path (`lib.rs` is the root "").
fn read_tree(root: &Path, dir: &Path, files: &mut Files) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|entry| entry.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(root, &path, files);
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") || path == root.join("main.rs") {
            continue;
        }
        let relative = path.strip_prefix(root).expect("under src/");
        let mut parts: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        files.insert(parts.join("::"), text);
    }
}

/// A module path → the names it re-exports (`pub use child::Item`) → the
/// file module that defines them.
type Reexports = BTreeMap<String, BTreeMap<String, String>>;

fn graph(files: &Files) -> Graph {
    let code: BTreeMap<&String, String> = files
        .iter()
        .map(|(module, text)| (module, blank_comments_and_literals(text)))
        .collect();
    let no_reexports = Reexports::new();
    let reexports: Reexports = code
        .iter()
        .map(|(module, code)| {
            let names = paths(code)
                .into_iter()
                .filter(|(at, _)| {
                    let before = code[..*at].trim_end();
                    ["pub use", "pub(crate) use", "pub(super) use"]
                        .iter()
                        .any(|visible| before.ends_with(visible.trim_end_matches(" use")))
                })
                .filter_map(|(at, path)| {
                    let scope = scope_at(code, at, &split(module));
                    let target = resolve(files, &no_reexports, &scope, &path)?;
                    Some((path.last()?.clone(), target))
                })
                .collect();
            ((*module).clone(), names)
        })
        .collect();
    code.iter()
        .map(|(module, code)| {
            let file_path = split(module);
            let imported = paths(code)
                .into_iter()
                .filter_map(|(at, path)| {
                    let scope = scope_at(code, at, &file_path);
                    resolve(files, &reexports, &scope, &path)
                })
                .filter(|target| !is_within(target, module))
                .collect();
            ((*module).clone(), imported)
        })
        .collect()
}

/// Whether `target` is `module` itself or one of its submodules: a module
/// naming its own parts (`pub use child::Item`, `child::f()`) is
/// composition, not an import.
fn is_within(target: &str, module: &str) -> bool {
    module.is_empty() || target == module || target.starts_with(&format!("{module}::"))
}

fn split(module: &str) -> Vec<String> {
    if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    }
}

/// The module a position is in: the file's, plus the inline `mod x { .. }`
/// blocks open there.
fn scope_at(code: &str, at: usize, file_path: &[String]) -> Vec<String> {
    let mut scope = file_path.to_vec();
    let mut open: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < at {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                if open.last() == Some(&depth) {
                    open.pop();
                    scope.pop();
                }
                depth = depth.saturating_sub(1);
            }
            b'm' if word_at(code, i, "mod") => {
                let rest = &code[i + 3..];
                let name: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let after = rest.trim_start()[name.len()..].trim_start();
                if !name.is_empty() && after.starts_with('{') {
                    let brace = code.len() - after.len();
                    if brace < at {
                        scope.push(name);
                        open.push(depth + 1);
                        depth += 1;
                        i = brace + 1;
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    scope
}

fn word_at(code: &str, i: usize, word: &str) -> bool {
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    code.as_bytes()[i..].starts_with(word.as_bytes())
        && (i == 0 || !is_ident(code.as_bytes()[i - 1]))
        && code
            .as_bytes()
            .get(i + word.len())
            .is_none_or(|c| !is_ident(*c))
}

/// Every path of a `use` tree (expanded) and every `a::b` path written
/// inline, with its position.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if word_at(code, i, "use") {
            let end = code[i..].find(';').map_or(code.len(), |e| i + e);
            let tree = code[i + 3..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            for path in expand(tree.trim_start_matches("::")) {
                found.push((i, path));
            }
            i = end;
            continue;
        }
        if is_ident(bytes[i]) && (i == 0 || !is_ident(bytes[i - 1])) {
            // `a::b::c`; not the tail of a longer path (`x::a::b`).
            let preceded = i >= 2 && &bytes[i - 2..i] == b"::";
            let mut end = i;
            let mut segments = Vec::new();
            loop {
                let start = end;
                while end < bytes.len() && is_ident(bytes[end]) {
                    end += 1;
                }
                segments.push(code[start..end].to_owned());
                if bytes[end..].starts_with(b"::")
                    && bytes.get(end + 2).is_some_and(|c| is_ident(*c))
                {
                    end += 2;
                } else {
                    break;
                }
            }
            if segments.len() > 1 && !preceded {
                found.push((i, segments));
            }
            i = end;
            continue;
        }
        i += 1;
    }
    found
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (`self` names `a`).
fn expand(tree: &str) -> Vec<Vec<String>> {
    let Some(open) = tree.find('{') else {
        // `a::b as c`: the path is `a::b`.
        let path: Vec<String> = tree
            .split("::")
            .filter_map(|s| s.split_whitespace().next())
            .filter(|s| *s != "*")
            .map(str::to_owned)
            .collect();
        return vec![path];
    };
    let prefix = tree[..open].trim().trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut paths = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let joined = if part == "self" {
            prefix.to_owned()
        } else {
            format!("{prefix}::{part}")
        };
        paths.extend(expand(&joined));
    }
    paths
}

/// The file a path names from `scope` (`crate::`, `super::`, `self::` or a
/// child module of the scope), following re-exports to the file that
/// defines the item; `None` for other crates and local names.
fn resolve(
    files: &Files,
    reexports: &Reexports,
    scope: &[String],
    path: &[String],
) -> Option<String> {
    let mut segments = path.iter().map(String::as_str).peekable();
    let mut base: Vec<String> = match *segments.peek()? {
        "crate" => {
            segments.next();
            Vec::new()
        }
        "super" | "self" => {
            let mut base = scope.to_vec();
            while let Some(&word @ ("super" | "self")) = segments.peek() {
                if word == "super" {
                    base.pop()?;
                }
                segments.next();
            }
            base
        }
        first => {
            let mut child = scope.to_vec();
            child.push(first.to_owned());
            if !files.contains_key(&child.join("::")) {
                return None;
            }
            scope.to_vec()
        }
    };
    // The deepest file module the path reaches, then the item after it.
    let mut target = files
        .contains_key(&base.join("::"))
        .then(|| base.join("::"));
    let mut item = None;
    for segment in segments {
        base.push(segment.to_owned());
        if files.contains_key(&base.join("::")) {
            target = Some(base.join("::"));
        } else {
            item = Some(segment);
            break;
        }
    }
    // An inline module (`tests`) is part of its file.
    let mut target = target.or_else(|| {
        (1..=scope.len())
            .rev()
            .map(|n| scope[..n].join("::"))
            .find(|m| files.contains_key(m))
    })?;
    // A re-export names the file that defines the item (a chain of them
    // is short; the bound only guards against a re-export loop).
    if let Some(item) = item {
        for _ in 0..8 {
            match reexports.get(&target).and_then(|names| names.get(item)) {
                Some(definer) if *definer != target => target = definer.clone(),
                _ => break,
            }
        }
    }
    Some(target)
}

/// A loop as its modules, first and last the same; `None` for a DAG.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node)?;
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut marks, &mut Vec::new()))
}

/// The text with comments, string and char literals replaced by spaces
/// (newlines kept), so only code makes edges.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let rest = |n: usize| chars.get(i + n).copied();
        let skip_to = |out: &mut String, from: usize, to: usize| {
            for c in &chars[from..to.min(chars.len())] {
                out.push(blank(*c));
            }
        };
        match (chars[i], rest(1)) {
            ('/', Some('/')) => {
                let end = (i..chars.len())
                    .find(|&j| chars[j] == '\n')
                    .unwrap_or(chars.len());
                skip_to(&mut out, i, end);
                i = end;
            }
            ('/', Some('*')) => {
                let mut depth = 0;
                let mut j = i;
                while j < chars.len() {
                    if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                        depth += 1;
                        j += 2;
                    } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                skip_to(&mut out, i, j);
                i = j;
            }
            ('r', Some('"' | '#'))
                if i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') =>
            {
                let hashes = (i + 1..chars.len())
                    .take_while(|&j| chars[j] == '#')
                    .count();
                if chars.get(i + 1 + hashes) != Some(&'"') {
                    out.push(chars[i]);
                    i += 1;
                    continue;
                }
                let close: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let body_start = i + 2 + hashes;
                let tail: String = chars[body_start..].iter().collect();
                let end = tail.find(&close).map_or(chars.len(), |e| {
                    body_start + tail[..e].chars().count() + close.len()
                });
                skip_to(&mut out, i, end);
                i = end;
            }
            ('"', _) => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '"' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                skip_to(&mut out, i, j + 1);
                i = j + 1;
            }
            ('\'', Some('\\')) => {
                let end = (i + 2..chars.len())
                    .find(|&j| chars[j] == '\'')
                    .unwrap_or(chars.len());
                skip_to(&mut out, i, end + 1);
                i = end + 1;
            }
            ('\'', Some(_)) if rest(2) == Some('\'') => {
                skip_to(&mut out, i, i + 3);
                i += 3;
            }
            // Code is ASCII from here on (identifiers here are), so it
            // can be sliced at any byte.
            (c, _) => {
                out.push(if c.is_ascii() { c } else { ' ' });
                i += 1;
            }
        }
    }
    out
}

/// The floors of `src/lib.rs`'s module map, lowest first.
const FLOORS: &[&[&str]] = &[
    &["sparse"],
    &[
        "access_log",
        "allocator",
        "lockout",
        "metrics",
        "path",
        "timer",
        "upstream_bound",
    ],
    &["config", "logging"],
    &["auth", "basic_auth", "http1"],
    &["authz_server", "policy", "throttle"],
    &["proxy"],
    &["server", "central"],
    &["reload"],
    &["admin"],
    &["gateway"],
    &["cli"],
];

#[test]
fn each_module_uses_only_lower_floors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Files::new();
    read_tree(&src, &src, &mut files);
    let floor_of = |module: &str| {
        let top = module.split("::").next().unwrap_or(module);
        FLOORS.iter().position(|floor| floor.contains(&top))
    };
    let mut upward = Vec::new();
    for (from, imported) in graph(&files).iter().filter(|(m, _)| !m.is_empty()) {
        let from_floor = floor_of(from).unwrap_or_else(|| panic!("`{from}` is on no floor"));
        for to in imported {
            let to_floor = floor_of(to).unwrap_or_else(|| panic!("`{to}` is on no floor"));
            let same_module = from.split("::").next() == to.split("::").next();
            if !same_module && to_floor >= from_floor {
                upward.push(format!("{from} → {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports on the same floor or up: {upward:#?}"
    );
}
