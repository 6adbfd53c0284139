//! Tidy: the layers inside crates, held by a plain test (in the spirit of rust-analyzer's
//! `tidy.rs`). Each crate below declares its modules in layers, bottom first; the test reads
//! every `use crate::...` (and every `crate::module::` path in code) of its source and fails,
//! naming file and line, on an import from a higher layer, on a module placed in no layer, on
//! an import of the crate root, and on a circle of modules. `cargo test -p xtask tidy`.
//!
//! Test modules (`#[cfg(test)] mod tests { ... }`, and `tests.rs` files) are not read: tests
//! may reach anything, and they are no part of what the crate builds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// (crate source folder relative to the workspace root, layers bottom first; each layer is a
/// list of module names, i.e. file stems or folder names under src/, and a module may import
/// only from modules in its own layer or below).
///
/// `lib.rs` is the crate root: above every layer, it may import anything, and nothing imports
/// it (`crate::SomeReexport` counts as importing it, so such items live in a layer instead).
/// Imports inside one layer are allowed while they form no circle.
const LAYERS: &[(&str, &[&[&str]])] = &[
    (
        "crates/api/src",
        &[
            // Values and parsing: the envelope, the schema names it and the routes' docs give,
            // the error table, params, auth, limits, callbacks, the request guard's policies,
            // the metrics recorder, a rendered status answer.
            &[
                "clock", "headers", "schema", "envelope", "error", "params", "limits", "auth", "callback",
                "guard", "metrics", "answer",
            ],
            // The state and what it holds: the blocking pool, the claim waiters, the watcher.
            &["pool", "claims", "watcher", "state"],
            // Shared HTTP plumbing: answering status reads (limits, ETags), reading bodies and
            // spooling uploads,
            // resources with their 405s and the 404, the middleware.
            &["answering", "body", "upload", "routing", "middleware"],
            // One module per resource, each registering its own routes.
            &["status", "watch", "processes", "results", "parts", "tasks", "dashboard", "operations"],
            // The router and the OpenAPI document, collecting the resources; test helpers.
            &["router", "openapi", "test_support"],
        ],
    ),
    (
        "crates/persistence/src",
        &[
            // The error type and the diesel schema.
            &["error", "schema"],
            // Rows of the status read model; the connection over both backends, its
            // transactions and process locks.
            &["models", "connection"],
            // The pool and its migrations.
            &["store"],
            // Statements outside the task life cycle: status reads and imports, operations.
            &["queries", "ops"],
            // What the life cycle's transactions share: rows, states, the record answered.
            &["run"],
            // The notification outbox, which a final status feeds.
            &["outbox"],
            // Moving a process on: the next step, stored statuses, stopping early.
            &["advance"],
            // Transactions: starting a process; what a lease holder does.
            &["start", "lease"],
            // Transactions: claiming (which gives up expired last attempts); commands, list;
            // uploads in parts.
            &["claim", "commands", "parts"],
            // `ProcessStore` and `TaskStore` for `Store`, each call one transaction above.
            &["engine"],
            // Test support: fresh stores, and processes driven through the traits.
            &["testing", "fixtures"],
        ],
    ),
];

/// One `crate::` import found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    line: usize,
    /// The first name after `crate::`: a module, or an item of the crate root.
    name: String,
}

/// The module a source file belongs to: its stem at the top of src/, else its first folder.
fn module_of(relative: &Path) -> String {
    let mut parts = relative.components();
    let first = parts.next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    if parts.next().is_some() { first } else { first.trim_end_matches(".rs").to_owned() }
}

/// Every `crate::` import of `text`, outside comments and test modules.
fn imports(text: &str) -> Vec<Import> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut index = 0;
    // Brace depth inside a skipped test module, when in one.
    let mut skipping: Option<i64> = None;
    let mut pending_cfg_test = false;
    // A `use crate::` statement spread over lines: its text so far and its first line.
    let mut statement: Option<(usize, String)> = None;
    while index < lines.len() {
        let number = index + 1;
        let code = strip_comment(lines[index]);
        index += 1;
        if let Some(depth) = skipping.as_mut() {
            *depth += braces(code);
            if *depth <= 0 {
                skipping = None;
            }
            continue;
        }
        let trimmed = code.trim();
        if trimmed == "#[cfg(test)]" {
            pending_cfg_test = true;
            continue;
        }
        if pending_cfg_test && trimmed.starts_with("mod ") && trimmed.contains('{') {
            let depth = braces(code);
            skipping = (depth > 0).then_some(depth);
            pending_cfg_test = false;
            continue;
        }
        if !trimmed.is_empty() && !trimmed.starts_with("#[") {
            pending_cfg_test = false;
        }
        if let Some((first, mut text)) = statement.take() {
            text.push_str(code);
            if code.contains(';') {
                found.extend(use_names(&text).into_iter().map(|name| Import { line: first, name }));
            } else {
                statement = Some((first, text));
            }
            continue;
        }
        if let Some(start) = use_start(trimmed) {
            let rest = &trimmed[start..];
            if rest.contains(';') {
                found.extend(use_names(rest).into_iter().map(|name| Import { line: number, name }));
            } else {
                statement = Some((number, rest.to_owned()));
            }
            continue;
        }
        found.extend(path_names(code).into_iter().map(|name| Import { line: number, name }));
    }
    found
}

/// The line without its `//` comment (a `//` inside a string literal is rare enough in
/// import lines to ignore; the worst case is a missed path, never a false failure).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

fn braces(code: &str) -> i64 {
    code.chars().map(|c| i64::from(c == '{') - i64::from(c == '}')).sum()
}

/// Where `crate::` starts in a `use` line (`use`, `pub use`, `pub(crate) use`), if it is one.
fn use_start(trimmed: &str) -> Option<usize> {
    let after_visibility = if let Some(rest) = trimmed.strip_prefix("pub") {
        let rest = rest.trim_start();
        let rest = if rest.starts_with('(') { rest.split_once(')').map_or("", |(_, r)| r) } else { rest };
        rest.trim_start()
    } else {
        trimmed
    };
    let rest = after_visibility.strip_prefix("use ")?.trim_start();
    rest.starts_with("crate::").then(|| trimmed.len() - rest.len())
}

/// The first names of a `crate::...;` use tree: `crate::a::b` gives `a`, `crate::{a, b::c}`
/// gives `a` and `b`.
fn use_names(statement: &str) -> Vec<String> {
    let tree = statement.trim_start().trim_start_matches("crate::").trim_start();
    let Some(group) = tree.strip_prefix('{') else {
        return first_ident(tree).into_iter().collect();
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                item_start = false;
                names.extend(first_ident(&group[i..]));
            }
            _ => {}
        }
    }
    names
}

fn first_ident(text: &str) -> Option<String> {
    let ident: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// The first names of `crate::name` paths in a line of code (not `$crate::`).
fn path_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            names.extend(first_ident(after));
        }
        rest = after;
    }
    names
}

/// Every `.rs` file under `dir`, as (path relative to `dir`, text).
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path.strip_prefix(dir).unwrap().to_path_buf(), text));
            }
        }
    }
    files.sort();
    files
}

/// Every broken rule of one crate's `files` (paths relative to its src/, shown under `root`).
fn check(root: &str, files: &[(PathBuf, String)], layers: &[&[&str]]) -> Vec<String> {
    let layer_of: BTreeMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, names)| names.iter().map(move |n| (*n, i))).collect();
    let mut problems = Vec::new();
    let present: BTreeSet<String> = files.iter().map(|(path, _)| module_of(path)).collect();
    for name in layer_of.keys() {
        if !present.contains(*name) {
            problems.push(format!("{root}: `{name}` is listed in LAYERS but there is no such module"));
        }
    }
    // Module-level edges, each with the first place that makes it.
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for (path, text) in files {
        let from = module_of(path);
        let shown = format!("{root}/{}", path.display());
        let crate_root = from == "lib" || from == "main";
        if !crate_root && !layer_of.contains_key(from.as_str()) {
            problems.push(format!(
                "{shown}: module `{from}` is in no layer of LAYERS (xtask/src/tidy.rs): place it"
            ));
            continue;
        }
        // A test module in its own file (`mod tests;`), read no more than one inline.
        let test_file = path.file_stem().is_some_and(|stem| stem == "tests");
        for import in imports(text).into_iter().filter(|_| !test_file) {
            let place = format!("{shown}:{}", import.line);
            if crate_root || import.name == from {
                continue;
            }
            let Some(&to_layer) = layer_of.get(import.name.as_str()) else {
                problems.push(format!(
                    "{place}: `{from}` imports `crate::{}` from the crate root; nothing imports the root, \
                     so import the item from the module in a layer that holds it",
                    import.name
                ));
                continue;
            };
            let from_layer = layer_of[from.as_str()];
            if to_layer > from_layer {
                problems.push(format!(
                    "{place}: `{from}` (layer {from_layer}) imports `{}` (layer {to_layer}), a higher layer; \
                     a module may import only from its own layer or below",
                    import.name
                ));
            }
            edges.entry((from.clone(), import.name.clone())).or_insert(place);
        }
    }
    problems.extend(circles(&edges));
    problems
}

/// One message per circle of modules found (each named with the places of its imports).
fn circles(edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    let mut problems = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for start in next.keys() {
        let mut path: Vec<&str> = Vec::new();
        visit(start, &next, &mut path, &mut done, &mut |circle| {
            let places: Vec<&str> = circle
                .windows(2)
                .map(|pair| edges[&(pair[0].to_owned(), pair[1].to_owned())].as_str())
                .collect();
            problems.push(format!(
                "a circle of modules: {} (imports at {})",
                circle.join(" -> "),
                places.join(", ")
            ));
        });
    }
    problems
}

fn visit<'a>(
    node: &'a str,
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    report: &mut dyn FnMut(Vec<&'a str>),
) {
    if let Some(at) = path.iter().position(|n| *n == node) {
        let mut circle = path[at..].to_vec();
        circle.push(node);
        report(circle);
        return;
    }
    if done.contains(node) {
        return;
    }
    path.push(node);
    for to in next.get(node).into_iter().flatten() {
        visit(to, next, path, done, report);
    }
    path.pop();
    done.insert(node);
}

#[test]
fn tidy_layers_inside_crates_hold() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    for (dir, layers) in LAYERS {
        problems.extend(check(dir, &sources(&workspace.join(dir)), layers));
    }
    assert!(problems.is_empty(), "the layers inside crates are broken:\n{}", problems.join("\n"));
}

#[cfg(test)]
mod checks {
    use super::*;

    const LAYERS: &[&[&str]] = &[&["low"], &["mid_a", "mid_b"], &["high"]];

    fn run(files: &[(&str, &str)]) -> Vec<String> {
        let files: Vec<(PathBuf, String)> =
            files.iter().map(|(path, text)| (PathBuf::from(path), (*text).to_owned())).collect();
        check("src", &files, LAYERS)
    }

    fn names(text: &str) -> Vec<(usize, String)> {
        imports(text).into_iter().map(|i| (i.line, i.name)).collect()
    }

    #[test]
    fn tidy_reads_plain_grouped_multi_line_and_in_code_imports() {
        let text = "use crate::a::B;\npub(crate) use crate::{b, c::{D, E}};\nuse crate::{\n    f::G,\n    h,\n};\n\
                    // use crate::commented;\nfn x() { crate::i::j(); $crate::k::l(); }\n";
        assert_eq!(
            names(text),
            [(1, "a"), (2, "b"), (2, "c"), (3, "f"), (3, "h"), (8, "i")].map(|(l, n)| (l, n.to_owned()))
        );
    }

    #[test]
    fn tidy_skips_test_modules() {
        let text = "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n    fn f() { if x {} }\n}\nuse crate::c;\n";
        assert_eq!(names(text), [(1, "a".to_owned()), (7, "c".to_owned())]);
    }

    #[test]
    fn tidy_allows_downward_and_same_layer_imports() {
        let files = [
            ("lib.rs", "use crate::high::X;\nuse crate::Whatever;"),
            ("high.rs", "use crate::mid_a::Y;\nuse crate::low::Z;"),
            ("mid_a.rs", "use crate::mid_b::W;"),
            ("mid_b/mod.rs", "use crate::low::V;"),
            ("mid_b/inner.rs", "use crate::mid_b::U;"),
            ("low.rs", ""),
            // A test module in its own file may reach anything.
            ("low/tests.rs", "use crate::high::T;"),
        ];
        assert_eq!(run(&files), Vec::<String>::new());
    }

    #[test]
    fn tidy_fails_on_an_upward_import_naming_file_and_line() {
        let files =
            [("high.rs", ""), ("mid_a.rs", ""), ("mid_b.rs", ""), ("low.rs", "\nuse crate::mid_a::Y;")];
        let problems = run(&files);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("src/low.rs:2: `low` (layer 0) imports `mid_a` (layer 1)"),
            "{problems:?}"
        );
    }

    #[test]
    fn tidy_fails_on_an_unplaced_module_a_root_import_and_a_circle() {
        let files = [
            ("high.rs", "fn f() -> crate::Root { todo!() }"),
            ("mid_a.rs", "use crate::mid_b::X;"),
            ("mid_b.rs", "use crate::mid_a::Y;"),
            ("low.rs", ""),
            ("stray.rs", ""),
        ];
        let problems = run(&files).join("\n");
        assert!(problems.contains("src/stray.rs: module `stray` is in no layer"), "{problems}");
        assert!(
            problems.contains("src/high.rs:1: `high` imports `crate::Root` from the crate root"),
            "{problems}"
        );
        assert!(
            problems.contains(
                "a circle of modules: mid_a -> mid_b -> mid_a (imports at src/mid_a.rs:1, src/mid_b.rs:1)"
            ),
            "{problems}"
        );
    }
}
