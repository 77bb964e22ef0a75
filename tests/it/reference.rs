//! docs/REFERENCE.md stays true to the command lines: every flag and every environment variable
//! that `backup-server` and `backupctl` (and each of their subcommands) accept, as their `--help`
//! lists them, is named in the reference.

use monoskope_backup_tests::run;

/// `--help` of `path` (a binary and its subcommands).
fn help(bin: &str, path: &[&str]) -> String {
    let mut args: Vec<&str> = path.to_vec();
    args.push("--help");
    let out = run(bin, &args, &[]);
    assert_eq!(out.code, Some(0), "{bin} {path:?}: {out:?}");
    out.stdout
}

/// The subcommands a help text lists (but `help`).
fn subcommands(text: &str) -> Vec<String> {
    let Some(rest) = text.split("\nCommands:\n").nth(1) else {
        return Vec::new();
    };
    rest.lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let l = l.strip_prefix("  ")?;
            (!l.starts_with(' ')).then(|| l.split_whitespace().next().unwrap_or("").to_string())
        })
        .filter(|c| c != "help" && !c.is_empty())
        .collect()
}

/// Every `--flag` and `[env: NAME=]` of a help text.
fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(flag) = t.strip_prefix("--").or_else(|| {
            t.strip_prefix("-")
                .and_then(|r| r.split_once(", --"))
                .map(|(_, f)| f)
        }) {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() && name != "help" && name != "version" {
                out.push(format!("--{name}"));
            }
        }
        if let Some(i) = t.find("[env: ") {
            let env: String = t[i + 6..].chars().take_while(|c| *c != '=').collect();
            out.push(env);
        }
    }
    out
}

#[test]
fn every_flag_and_environment_variable_is_in_the_reference() {
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/REFERENCE.md"),
    )
    .expect("docs/REFERENCE.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    for bin in ["backup-server", "backupctl"] {
        let mut paths: Vec<Vec<String>> = vec![Vec::new()];
        while let Some(path) = paths.pop() {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let text = help(bin, &p);
            for sub in subcommands(&text) {
                let mut next = path.clone();
                next.push(sub);
                paths.push(next);
            }
            for name in names(&text) {
                seen += 1;
                let quoted = format!("`{name}");
                if !reference.contains(&quoted) {
                    missing.push(format!("{bin} {}: {name}", p.join(" ")));
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(seen > 60, "the help texts were read ({seen} names)");
    assert!(
        missing.is_empty(),
        "docs/REFERENCE.md does not name these (as `NAME…`):\n{}",
        missing.join("\n")
    );
}

/// The reference's table of exit codes is the one both CLIs exit with.
#[test]
fn the_reference_lists_exactly_the_exit_codes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/REFERENCE.md"))
        .expect("reference");
    let table = monoskope_backup_client::exit::Exit::markdown_table();
    assert!(
        doc.contains(&table),
        "docs/REFERENCE.md does not hold the exit-code table:\n{table}"
    );
}
