//! Tidy checks that run as ordinary tests: every Rust file says what it is for, and `unsafe`
//! code lives only in `sys.rs` modules.

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
}
