//! Tidy checks that run as ordinary tests: every Rust file says what it is for, `unsafe` code
//! lives only in `sys.rs` modules, and no two files of a crate depend on each other in a cycle.

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let skip = |name: &std::ffi::OsStr| {
            name == "target" || name == ".git" || name == "corpus" || name == "artifacts"
        };
        minke::fsutil::walk_sorted(dir, skip)
            .expect("the workspace can be read")
            .into_iter()
            .filter(|e| !e.file_type.is_dir() && e.rel.extension().is_some_and(|x| x == "rs"))
            .map(|e| dir.join(e.rel))
            .collect()
    }

    #[test]
    fn every_rust_file_opens_with_a_module_doc() {
        let root = crate::workspace_root();
        let files = rust_files(&root);
        assert!(
            files.len() > 50,
            "found only {} .rs files under {}",
            files.len(),
            root.display()
        );
        let missing: Vec<String> = files
            .iter()
            .filter(|f| {
                !std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .trim_start()
                    .starts_with("//!")
            })
            .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
            .collect();
        assert!(
            missing.is_empty(),
            "files without a `//!` first line: {missing:#?}"
        );
    }

    /// Whether `line` (comments and string contents aside) uses the `unsafe` keyword.
    fn uses_unsafe(line: &str) -> bool {
        let code = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        let mut plain = String::new();
        let mut chars = code.chars();
        while let Some(c) = chars.next() {
            if in_str && c == '\\' {
                chars.next();
            } else if c == '"' {
                in_str = !in_str;
            } else if !in_str {
                plain.push(c);
            }
        }
        plain
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == "unsafe")
    }

    #[test]
    fn unsafe_code_only_in_sys_modules() {
        let root = crate::workspace_root();
        let files = rust_files(&root);
        let offenders: Vec<String> = files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n != "sys.rs"))
            .flat_map(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| uses_unsafe(l))
                    .map(|(i, l)| format!("{rel}:{}: {}", i + 1, l.trim()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "`unsafe` outside sys.rs: {offenders:#?}"
        );
        assert!(uses_unsafe("    unsafe { x() }"));
        assert!(!uses_unsafe("// unsafe here is a word"));
        assert!(!uses_unsafe("let s = \"unsafe\";"));
        assert!(!uses_unsafe("#![forbid(unsafe_code)]"));
    }

    /// A crate's modules: module path (`["image", "manifest"]`) → file.
    fn modules_of(src: &Path) -> std::collections::BTreeMap<Vec<String>, std::path::PathBuf> {
        rust_files(src)
            .into_iter()
            .filter(|f| !f.strip_prefix(src).is_ok_and(|r| r.starts_with("bin")))
            .map(|f| {
                let rel = f.strip_prefix(src).unwrap_or(&f).with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] || parts == ["main"] {
                    parts.clear();
                }
                (parts, f)
            })
            .collect()
    }

    /// The module paths `code` (a file of module `module`) names through `crate::`, `super::`
    /// and `self::` paths, `use` groups included.
    fn named_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        let mut out = Vec::new();
        let bytes: Vec<char> = code.chars().collect();
        let mut i = 0;
        while i < bytes.len() {
            let starts_word = i == 0 || !ident(bytes[i - 1]);
            let rest: String = bytes[i..bytes.len().min(i + 8)].iter().collect();
            let base = if !starts_word {
                None
            } else if rest.starts_with("crate::") {
                i += 7;
                Some(Vec::new())
            } else if rest.starts_with("super::") {
                i += 7;
                let mut b = module[..module.len().saturating_sub(1)].to_vec();
                while bytes[i..].iter().collect::<String>().starts_with("super::") {
                    b.pop();
                    i += 7;
                }
                Some(b)
            } else if rest.starts_with("self::") {
                i += 6;
                Some(module.to_vec())
            } else {
                None
            };
            let Some(base) = base else {
                i += 1;
                continue;
            };
            // A path, or a `{…}` group of paths.
            let mut group = String::new();
            if bytes.get(i) == Some(&'{') {
                let mut depth = 0;
                for &c in &bytes[i..] {
                    i += 1;
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    group.push(c);
                }
            } else {
                while i < bytes.len() && (ident(bytes[i]) || bytes[i] == ':') {
                    group.push(bytes[i]);
                    i += 1;
                }
            }
            for item in group.trim_start_matches('{').split(',') {
                let path: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|p| p.chars().take_while(|c| ident(*c)).collect::<String>())
                    .take_while(|p| !p.is_empty())
                    .collect();
                let mut full = base.clone();
                full.extend(path);
                out.push(full);
            }
        }
        out
    }

    #[test]
    fn no_import_cycle_between_files() {
        use std::collections::{BTreeMap, BTreeSet};
        let root = crate::workspace_root();
        let crates: Vec<std::path::PathBuf> = rust_files(&root)
            .into_iter()
            .filter_map(|f| {
                let dir = f.parent()?.to_path_buf();
                (dir.file_name()? == "src" && dir.parent()?.join("Cargo.toml").is_file())
                    .then_some(dir)
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(crates.len() >= 8, "found only {} crates", crates.len());
        let mut cycles = Vec::new();
        for src in &crates {
            let mods = modules_of(src);
            // Edges to other files of the crate; a module naming its own descendants is how
            // a parent is made of its children, not a dependency that can close a cycle.
            let mut edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
            for (m, file) in &mods {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
                let code: String = text
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("\n");
                let to = edges.entry(m).or_default();
                for path in named_paths(&code, m) {
                    let target = (0..=path.len())
                        .rev()
                        .find_map(|k| mods.get_key_value(&path[..k]).map(|(key, _)| key));
                    if let Some(t) = target.filter(|t| !t.starts_with(m)) {
                        to.insert(t);
                    }
                }
            }
            // Depth-first search for a back edge.
            fn visit<'a>(
                m: &'a Vec<String>,
                edges: &BTreeMap<&'a Vec<String>, BTreeSet<&'a Vec<String>>>,
                state: &mut BTreeMap<&'a Vec<String>, u8>,
                path: &mut Vec<&'a Vec<String>>,
                found: &mut Vec<Vec<&'a Vec<String>>>,
            ) {
                state.insert(m, 1);
                path.push(m);
                for t in edges.get(m).into_iter().flatten() {
                    match state.get(t) {
                        Some(1) => {
                            let at = path.iter().position(|p| p == t).unwrap_or(0);
                            let mut c = path[at..].to_vec();
                            c.push(t);
                            found.push(c);
                        }
                        Some(_) => {}
                        None => visit(t, edges, state, path, found),
                    }
                }
                path.pop();
                state.insert(m, 2);
            }
            let mut state = BTreeMap::new();
            let mut found = Vec::new();
            for m in mods.keys() {
                if !state.contains_key(m) {
                    visit(m, &edges, &mut state, &mut Vec::new(), &mut found);
                }
            }
            for c in found {
                let names: Vec<String> = c
                    .iter()
                    .map(|m| {
                        mods[*m]
                            .strip_prefix(&root)
                            .unwrap_or(&mods[*m])
                            .display()
                            .to_string()
                    })
                    .collect();
                cycles.push(names.join(" -> "));
            }
        }
        assert!(
            cycles.is_empty(),
            "files that import each other: {cycles:#?}"
        );
        let m = vec!["image".to_string(), "assemble".to_string()];
        assert_eq!(
            named_paths("use super::{config::x, BuildError};", &m),
            [
                vec!["image".to_string(), "config".into(), "x".into()],
                vec!["image".to_string(), "BuildError".into()]
            ]
        );
        assert_eq!(
            named_paths("crate::a::b(x)", &m),
            [vec!["a".to_string(), "b".into()]]
        );
    }
}
