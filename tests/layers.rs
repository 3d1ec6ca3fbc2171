//! The module graph: imports run one way. Read from the sources (every `crate::` path
//! outside tests and comments), so a new import that closes a cycle fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Top-level module → the top-level modules it names.
fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = Graph::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if top == "main" || top == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            let deps = g.entry(top.clone()).or_default();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or_default();
                let mut rest = code;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + "crate::".len()..];
                    let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                        let end = group.find('}').unwrap_or(group.len());
                        group[..end]
                            .split(',')
                            .map(|s| s.trim().split("::").next().unwrap_or_default())
                            .collect()
                    } else {
                        vec![
                            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                                .next()
                                .unwrap_or_default(),
                        ]
                    };
                    for n in names {
                        if !n.is_empty() && n != top && n != "self" {
                            deps.insert(n.to_string());
                        }
                    }
                }
            }
        }
    }
    g
}

/// Modules `from` reaches, itself excluded unless through a cycle.
fn reach(g: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = g.get(from).into_iter().flatten().cloned().collect();
    while let Some(m) = todo.pop() {
        if seen.insert(m.clone()) {
            todo.extend(g.get(&m).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_module_graph_has_no_cycles() {
    let g = graph();
    assert!(g.len() > 10, "{g:?}");
    let cycles: Vec<&String> = g.keys().filter(|m| reach(&g, m).contains(*m)).collect();
    assert!(cycles.is_empty(), "modules on a cycle: {cycles:?}\n{g:#?}");
}

#[test]
fn the_layers_import_downward_only() {
    let g = graph();
    let deps = |m: &str| g.get(m).cloned().unwrap_or_default();
    // The domain and the JSON contract stand on nothing but the domain.
    assert!(deps("model").is_empty(), "{:?}", deps("model"));
    assert!(
        deps("api").iter().all(|d| d == "model"),
        "{:?}",
        deps("api")
    );
    // The process boundary and the journal know nothing of supervision or the API.
    for m in ["process", "journal", "jobs", "protocol", "time"] {
        for above in [
            "supervisor",
            "control",
            "api",
            "cli",
            "daemon",
            "http",
            "bench",
        ] {
            assert!(
                !reach(&g, m).contains(above),
                "{m} reaches {above}: {:?}",
                reach(&g, m)
            );
        }
    }
    // The core does not import the commands or the benchmark.
    for m in [
        "supervisor",
        "journal",
        "process",
        "control",
        "daemon",
        "http",
    ] {
        for client in ["cli", "bench"] {
            assert!(!reach(&g, m).contains(client), "{m} reaches {client}");
        }
    }
}
