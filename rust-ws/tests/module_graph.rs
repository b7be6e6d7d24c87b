//! rust-ws's modules depend on each other one way: no cycle in the `use crate::…` graph.
//!
//! Counterpart: none in python-ws (Python would fail at import on most cycles, not on all).
//!
//! A cycle (a hub that uses connection and a connection that uses hub) ties two concerns into one
//! and hides which one owns what. This reads src/*.rs and draws an edge from a module to every
//! module it names through `crate::` (in a path or in a `use crate::{…}` group), outside comments
//! and its `#[cfg(test)]` module: tests may build the whole server. The crate root, lib.rs,
//! declares and builds from every module, so a module naming one of lib.rs's own items is a cycle
//! through the root; names lib.rs re-exports (`pub use config::Config`) and exported macros count
//! as edges to the module that defines them. main.rs is a separate crate (the binary).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → its source without comments and without the `#[cfg(test)]` module.
fn sources() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(name, code);
    }
    out
}

/// The identifiers that follow `crate::` in `code`, including each name of a `crate::{a, b::c}`
/// group (its first segment).
fn crate_names(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Module → the modules it depends on.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = sources();
    let modules: BTreeSet<String> = src.keys().filter(|m| *m != "lib").cloned().collect();
    // Where a name used through the crate root really lives.
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for (module, code) in &src {
        for line in code.lines() {
            if let Some(rest) = line.trim().strip_prefix("macro_rules! ") {
                let name: String = rest.chars().take_while(|c| *c != ' ').collect();
                home.insert(name, module.clone());
            }
        }
    }
    for line in src["lib"].lines() {
        // `pub use config::{Config, LogLevel};` / `pub use server::Server;`
        if let Some(rest) = line.trim().strip_prefix("pub use ") {
            let (module, items) = rest.trim_end_matches(';').split_once("::").unwrap();
            for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
                home.insert(item.trim().to_string(), module.to_string());
            }
        }
    }
    let mut graph = BTreeMap::new();
    for (module, code) in &src {
        let deps: BTreeSet<String> = if module == "lib" {
            // The root declares every module and builds the server from them.
            modules.clone()
        } else {
            crate_names(code)
                .into_iter()
                .map(|name| {
                    if modules.contains(&name) {
                        name
                    } else {
                        home.get(&name)
                            .cloned()
                            .unwrap_or_else(|| "lib".to_string())
                    }
                })
                .filter(|dep| dep != module)
                .collect()
        };
        graph.insert(module.clone(), deps);
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Depth-first search; `path` is the current chain, `done` the modules fully explored.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for dep in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "a dependency cycle between rust-ws modules: {}\ngraph: {graph:#?}",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_intended_dependencies_are_seen() {
    // The graph reader must see real edges, or a cycle could hide from it.
    let graph = graph();
    for (from, to) in [
        ("connection", "hub"),
        ("connection", "server"),
        ("connection", "log"),
        ("hub", "protocol"),
        ("routes", "connection"),
        ("write_batch", "frame_walk"),
        ("metrics", "le_labels"),
    ] {
        assert!(
            graph[from].contains(to),
            "{from} → {to} not seen: {graph:#?}"
        );
    }
    assert!(!graph["hub"].contains("connection"));
}

#[test]
fn a_cycle_is_found() {
    let mut graph = graph();
    graph
        .get_mut("hub")
        .unwrap()
        .insert("connection".to_string());
    let cycle = find_cycle(&graph).expect("hub → connection → hub");
    assert!(cycle.contains(&"hub".to_string()) && cycle.contains(&"connection".to_string()));
    let mut graph = self::graph();
    graph.get_mut("hub").unwrap().insert("lib".to_string());
    assert!(find_cycle(&graph).is_some(), "through the crate root");
}
