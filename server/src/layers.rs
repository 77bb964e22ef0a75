//! The layer test: every module of the crate imports only from its own layer or the layers
//! below it, the modules' import graph has no circle, and `docs/ARCHITECTURE.md` lists the same
//! layers (so the order is written once for the code and kept true in the docs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use its own layer and those below it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "values",
        &[
            "archive", "time", "redact", "identity", "database", "bus", "devstore",
        ],
    ),
    (
        "outside",
        &[
            "destination",
            "catalog",
            "eventstore",
            "events_table",
            "watermark",
        ],
    ),
    ("events", &["source", "sink", "import"]),
    ("ops", &["ops"]),
    ("engine", &["engine"]),
    ("service", &["auth", "grpc"]),
    ("commands", &["cli"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The `crate::X` modules `text` names outside comments and its `#[cfg(test)]` module.
fn uses(text: &str) -> BTreeSet<String> {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// module → the modules it uses, with one file that does.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src").to_path_buf();
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        if rel_s == "lib.rs" || rel_s == "main.rs" || rel_s == "layers.rs" {
            continue;
        }
        // Test-only files are outside the layers.
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let module = rel_s
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(&f).expect("read");
        for used in uses(&text) {
            if used != module {
                g.entry(module.clone())
                    .or_default()
                    .entry(used)
                    .or_insert_with(|| rel_s.clone());
            }
        }
        g.entry(module).or_default();
    }
    g
}

#[test]
fn every_module_has_a_layer_and_imports_only_downwards() {
    let g = graph();
    let mut wrong = Vec::new();
    for (module, used) in &g {
        let Some(mine) = layer_of(module) else {
            wrong.push(format!("{module} has no layer in layers.rs"));
            continue;
        };
        for (other, file) in used {
            match layer_of(other) {
                Some(theirs) if theirs <= mine => {}
                Some(theirs) => wrong.push(format!(
                    "{file}: {module} ({}) uses {other} ({}), a layer above it",
                    LAYERS[mine].0, LAYERS[theirs].0
                )),
                None => wrong.push(format!("{file}: {other} has no layer in layers.rs")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_import_graph_has_no_circle() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in g.get(m).into_iter().flat_map(|u| u.keys()) {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(m, &g, &mut Vec::new(), &mut done) {
            panic!(
                "the modules import each other in a circle: {}",
                c.join(" -> ")
            );
        }
    }
}

#[test]
fn the_architecture_doc_lists_the_same_layers() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md"),
    )
    .expect("docs/ARCHITECTURE.md");
    let section = doc
        .split("## Layers")
        .nth(1)
        .expect("a \"## Layers\" section")
        .split("\n## ")
        .next()
        .unwrap_or("");
    let mut at = 0;
    for (i, (name, modules)) in LAYERS.iter().enumerate() {
        let line = section
            .lines()
            .find(|l| l.starts_with(&format!("{}. **{name}**", i + 1)))
            .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md lists no layer {}. **{name}**", i + 1));
        for m in *modules {
            assert!(
                line.contains(&format!("`{m}`")),
                "docs/ARCHITECTURE.md's layer {name} does not name `{m}`"
            );
        }
        let pos = section.find(line).expect("line");
        assert!(
            pos >= at,
            "docs/ARCHITECTURE.md lists layer {name} out of order"
        );
        at = pos;
    }
}
