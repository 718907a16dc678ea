//! The validated stage: a [`RawSpec`] checked section by section into a [`Spec`], each error
//! located in the source text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use minke_protocol::config::AgentKind;

use super::locate::Source;
use super::raw::*;
use super::{FileEntry, FileWhat, Spec, SpecError};

/// Parses `uid` or `uid:gid`.
pub fn parse_user(s: &str) -> Option<(u32, u32)> {
    match s.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
        None => {
            let u = s.parse().ok()?;
            Some((u, u))
        }
    }
}

/// Parses an octal mode string (`"0755"`, `"755"`, `"0o755"`).
pub fn parse_mode(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    if t.is_empty() || t.len() > 5 {
        return None;
    }
    let m = u32::from_str_radix(t, 8).ok()?;
    (m <= 0o7777).then_some(m)
}
/// Whether `s` can name an image (and so its output files): letters, digits, `-`, `_`, `.`,
/// not starting with `.`, at most 64 bytes.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with('.')
}
/// Checks every section of `raw` and resolves what the rest of the builder needs.
pub(super) fn validate(
    mut raw: RawSpec,
    src: &Source<'_>,
    base_dir: &Path,
) -> Result<Spec, SpecError> {
    check_identity(&raw, src)?;
    arch_defaults(&mut raw);
    let agents = agents(&raw, src)?;
    check_modules(&raw, src)?;
    check_network(&raw, src)?;
    check_tasks_and_services(&raw, &agents, src)?;
    let service_order = order_services(&raw.services, &agents, src)?;
    let files = files(&raw, src, base_dir)?;
    let packages = packages(&raw, src)?;
    check_disks(&raw, src)?;
    check_containers_and_sysctls(&raw, src)?;
    Ok(Spec {
        agents: agents.into_iter().collect(),
        raw,
        file: src.file.to_string(),
        base_dir: base_dir.to_path_buf(),
        files,
        packages,
        service_order,
    })
}

/// The image's name and architecture, the kernel package's name and the init package's.
/// The kernel and command line of an image whose spec names none are its architecture's
/// (the x86_64 ones are the serde defaults).
fn arch_defaults(raw: &mut RawSpec) {
    use minke_protocol::arch::Arch;
    let Some(arch) = Arch::parse(&raw.arch).filter(|a| *a != Arch::X86_64) else {
        return;
    };
    if let RawKernel::Package { package } = &mut raw.kernel {
        if package == Arch::X86_64.default_kernel_package() {
            *package = arch.default_kernel_package().into();
        }
    }
    if raw.cmdline == Arch::X86_64.default_cmdline() {
        raw.cmdline = arch.default_cmdline().into();
    }
}

fn check_identity(raw: &RawSpec, src: &Source<'_>) -> Result<(), SpecError> {
    if !valid_name(&raw.name) {
        return Err(src.err(
            "name",
            &raw.name,
            format!(
                "invalid image name {:?}: use 1-64 letters, digits, '-', '_' or '.'",
                raw.name
            ),
        ));
    }
    if !matches!(raw.arch.as_str(), "x86_64" | "aarch64") {
        return Err(src.err(
            "arch",
            &raw.arch,
            format!("unsupported arch {:?}: write x86_64 or aarch64", raw.arch),
        ));
    }
    if let RawKernel::Package { package } = &raw.kernel {
        if let Err(problem) = crate::sources::deb::check_package_name(package) {
            return Err(src.err("package", package, format!("kernel package: {problem}")));
        }
    }
    if !valid_name(&raw.init) {
        return Err(src.err(
            "init",
            &raw.init,
            format!("invalid init package name {:?}", raw.init),
        ));
    }
    Ok(())
}

/// The agents with their ports, plus the ones the spec implies: binfmt when `binfmt:` names
/// architectures, serial when the host may fall back to virtio-serial (whatever talks to the
/// host needs the serial agent then).
fn agents(raw: &RawSpec, src: &Source<'_>) -> Result<BTreeMap<AgentKind, Option<u32>>, SpecError> {
    let mut agents = BTreeMap::new();
    for a in &raw.agents {
        let (kind, port) = match a {
            RawAgent::Kind(k) => (*k, None),
            RawAgent::Full { kind, port } => (*kind, *port),
        };
        if agents.insert(kind, port).is_some() {
            return Err(src.err(
                "agents",
                "",
                format!("agent {} is listed twice", kind.name()),
            ));
        }
        if let Some(p) = port {
            if p == 0 || p == u32::MAX {
                return Err(src.err("port", &p.to_string(), format!("invalid vsock port {p}")));
            }
        }
    }
    if !raw.binfmt.is_empty() && !agents.contains_key(&AgentKind::Binfmt) {
        agents.insert(AgentKind::Binfmt, None);
    }
    for t in &raw.transports {
        if t != "vsock" && t != "serial" {
            return Err(src.err(
                "transports",
                t,
                format!("unknown transport {t:?}: use vsock or serial"),
            ));
        }
    }
    let serial = raw.transports.iter().any(|t| t == "serial");
    if serial
        && (agents.contains_key(&AgentKind::Control) || agents.contains_key(&AgentKind::Timesync))
    {
        agents.entry(AgentKind::Serial).or_insert(None);
    }
    Ok(agents)
}

/// Networking: a default network needs the card to be allowed.
fn check_network(raw: &RawSpec, src: &Source<'_>) -> Result<(), SpecError> {
    if raw.network == RawNetwork::User && !raw.allow_network {
        return Err(src.err(
            "network",
            "user",
            "`network: user` needs a network card, which `allow_network: false` leaves out",
        ));
    }
    Ok(())
}

/// Module names: one path component, no whitespace.
fn check_modules(raw: &RawSpec, src: &Source<'_>) -> Result<(), SpecError> {
    for m in &raw.modules {
        if m.is_empty() || m.contains('/') || m.contains(char::is_whitespace) {
            return Err(src.err("modules", m, format!("invalid module name {m:?}")));
        }
    }
    Ok(())
}

/// Tasks' and services' commands, services' names (unique, not an agent's) and OOM scores.
fn check_tasks_and_services(
    raw: &RawSpec,
    agents: &BTreeMap<AgentKind, Option<u32>>,
    src: &Source<'_>,
) -> Result<(), SpecError> {
    let mut names = BTreeSet::new();
    for t in raw.onboot.iter().chain(&raw.onshutdown) {
        check_command(
            src,
            &t.name,
            &t.command,
            t.user.as_deref(),
            t.cwd.as_deref(),
        )?;
    }
    for s in &raw.services {
        if !valid_name(&s.name) {
            return Err(src.err(
                "name",
                &s.name,
                format!("invalid service name {:?}", s.name),
            ));
        }
        if agents.keys().any(|k| k.name() == s.name) {
            return Err(src.err(
                "name",
                &s.name,
                format!("service name {:?} is taken by an agent", s.name),
            ));
        }
        if !names.insert(s.name.clone()) {
            return Err(src.err(
                "name",
                &s.name,
                format!("service {:?} is defined twice", s.name),
            ));
        }
        check_command(
            src,
            &s.name,
            &s.command,
            s.user.as_deref(),
            s.cwd.as_deref(),
        )?;
        if !(-1000..=1000).contains(&s.oom_score_adj) {
            return Err(src.err(
                "oom_score_adj",
                &s.oom_score_adj.to_string(),
                "oom_score_adj must be within -1000..=1000",
            ));
        }
    }
    Ok(())
}

/// File entries: absolute unique paths, exactly one kind of content, modes parsed, sources
/// that are readable regular files (resolved against `base_dir`).
fn files(raw: &RawSpec, src: &Source<'_>, base_dir: &Path) -> Result<Vec<FileEntry>, SpecError> {
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &raw.files {
        if !f.path.starts_with('/') || crate::archive::tree::normalize(&f.path).is_err() {
            return Err(src.err("path", &f.path, format!("file path {:?} must be absolute, without `.` or `..`, and shorter than PATH_MAX", f.path)));
        }
        if !seen.insert(f.path.trim_end_matches('/').to_string()) {
            return Err(src.err(
                "path",
                &f.path,
                format!("file {:?} is listed twice", f.path),
            ));
        }
        let n = [
            f.contents.is_some(),
            f.source.is_some(),
            f.symlink.is_some(),
            f.directory,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(src.err(
                "path",
                &f.path,
                format!(
                    "file {:?} needs exactly one of contents, source, symlink or directory: true",
                    f.path
                ),
            ));
        }
        let mode = match &f.mode {
            None if f.directory => 0o755,
            None if f.symlink.is_some() => 0o777,
            None => 0o644,
            Some(m) => parse_mode(m).ok_or_else(|| src.err("mode", m, format!("invalid mode {m:?} for {:?}: use an octal string such as \"0644\" (at most 07777)", f.path)))?,
        };
        let what = if let Some(c) = &f.contents {
            FileWhat::Contents(c.clone())
        } else if let Some(s) = &f.source {
            let p = base_dir.join(s);
            match std::fs::metadata(&p) {
                Ok(md) if md.is_file() => {}
                Ok(_) => {
                    return Err(src.err(
                        "source",
                        &s.display().to_string(),
                        format!("source {} is not a regular file", p.display()),
                    ))
                }
                Err(e) => {
                    return Err(src.err(
                        "source",
                        &s.display().to_string(),
                        format!("cannot read source {}: {e}", p.display()),
                    ))
                }
            }
            FileWhat::Source(p)
        } else if let Some(t) = &f.symlink {
            if t.is_empty() {
                return Err(src.err(
                    "symlink",
                    "",
                    format!("empty symlink target for {:?}", f.path),
                ));
            }
            FileWhat::Symlink(t.clone())
        } else {
            FileWhat::Directory
        };
        files.push(FileEntry {
            path: f.path.clone(),
            what,
            mode,
            uid: f.uid,
            gid: f.gid,
        });
    }
    Ok(files)
}

/// Package references: valid names, each listed once, with their override flag.
fn packages(raw: &RawSpec, src: &Source<'_>) -> Result<Vec<(String, bool)>, SpecError> {
    let mut packages = Vec::new();
    let mut pk = BTreeSet::new();
    for p in &raw.packages {
        let (name, ov) = match p {
            RawPackageRef::Name(n) => (n.clone(), false),
            RawPackageRef::Full { name, overrides } => (name.clone(), *overrides),
        };
        if !valid_name(&name) {
            return Err(src.err("packages", &name, format!("invalid package name {name:?}")));
        }
        if !pk.insert(name.clone()) {
            return Err(src.err(
                "packages",
                &name,
                format!("package {name:?} is listed twice"),
            ));
        }
        packages.push((name, ov));
    }
    Ok(packages)
}

/// Data disks: labels, mountpoints, filesystem and size.
fn check_disks(raw: &RawSpec, src: &Source<'_>) -> Result<(), SpecError> {
    let mut labels = BTreeSet::new();
    for d in &raw.disks {
        if !valid_name(&d.label) || d.label.len() > 16 {
            return Err(src.err(
                "label",
                &d.label,
                format!(
                    "invalid disk label {:?}: 1-16 letters, digits, '-', '_'",
                    d.label
                ),
            ));
        }
        if !labels.insert(d.label.clone()) {
            return Err(src.err(
                "label",
                &d.label,
                format!("disk {:?} is listed twice", d.label),
            ));
        }
        if !d.mountpoint.starts_with('/') || d.mountpoint == "/" {
            return Err(src.err(
                "mountpoint",
                &d.mountpoint,
                format!(
                    "disk mountpoint {:?} must be an absolute path other than /",
                    d.mountpoint
                ),
            ));
        }
        if d.fstype != "ext4" {
            return Err(src.err(
                "fstype",
                &d.fstype,
                format!(
                    "unsupported filesystem {:?}: only ext4 data disks are supported",
                    d.fstype
                ),
            ));
        }
        if let Some(s) = &d.size {
            if parse_size(s).is_none() {
                return Err(src.err(
                    "size",
                    s,
                    format!("invalid disk size {s:?}: use a number with K, M or G"),
                ));
            }
        }
    }
    Ok(())
}

/// Container names and sysctl keys and values.
fn check_containers_and_sysctls(raw: &RawSpec, src: &Source<'_>) -> Result<(), SpecError> {
    for c in &raw.containers {
        if !valid_name(&c.name) {
            return Err(src.err(
                "name",
                &c.name,
                format!("invalid container name {:?}", c.name),
            ));
        }
    }
    for (k, v) in &raw.sysctls {
        if k.is_empty() || k.contains('/') || k.contains("..") || v.contains('\n') {
            return Err(src.err(k, v, format!("invalid sysctl {k:?}")));
        }
    }
    Ok(())
}

/// Parses `512M`, `1G`, `4096` (bytes) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul).filter(|n| *n > 0)
}

fn check_command(
    src: &Source<'_>,
    name: &str,
    argv: &[String],
    user: Option<&str>,
    cwd: Option<&str>,
) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(src.err("name", "", "a task or service has an empty name"));
    }
    if argv.is_empty() || argv[0].is_empty() {
        return Err(src.err("name", name, format!("{name:?} has an empty command: give argv as a list, e.g. [\"/bin/sh\", \"-c\", \"...\"]")));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(src.err(
            "name",
            name,
            format!("{name:?}: command arguments cannot contain NUL bytes"),
        ));
    }
    if let Some(u) = user {
        if parse_user(u).is_none() {
            return Err(src.err(
                "user",
                u,
                format!("invalid user {u:?} for {name:?}: use a numeric uid or uid:gid"),
            ));
        }
    }
    if let Some(c) = cwd {
        if !c.starts_with('/') {
            return Err(src.err("cwd", c, format!("cwd {c:?} of {name:?} must be absolute")));
        }
    }
    Ok(())
}

/// Orders services so every `after:` dependency comes first; unknown names and cycles are
/// errors. Agents count as already-known names.
fn order_services(
    services: &[RawService],
    agents: &BTreeMap<AgentKind, Option<u32>>,
    src: &Source<'_>,
) -> Result<Vec<String>, SpecError> {
    let known: BTreeSet<&str> = services
        .iter()
        .map(|s| s.name.as_str())
        .chain(agents.keys().map(|k| k.name()))
        .collect();
    for s in services {
        for a in &s.after {
            if !known.contains(a.as_str()) {
                return Err(src.err("after", a, format!("service {:?} starts after {a:?}, which is neither a service nor an agent of this image", s.name)));
            }
        }
    }
    let by_name: BTreeMap<&str, &RawService> =
        services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
    let mut order = Vec::new();
    fn visit<'a>(
        n: &'a str,
        by_name: &BTreeMap<&'a str, &'a RawService>,
        state: &mut BTreeMap<&'a str, u8>,
        order: &mut Vec<String>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), Vec<String>> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Err(cycle);
            }
            _ => {}
        }
        let Some(s) = by_name.get(n) else {
            return Ok(());
        }; // an agent
        state.insert(n, 1);
        path.push(n);
        for a in &s.after {
            visit(a, by_name, state, order, path)?;
        }
        path.pop();
        state.insert(n, 2);
        order.push(n.to_string());
        Ok(())
    }
    for s in services {
        let mut path = Vec::new();
        visit(&s.name, &by_name, &mut state, &mut order, &mut path).map_err(|cycle| {
            src.err(
                "after",
                "",
                format!(
                    "services depend on each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
            )
        })?;
    }
    Ok(order)
}
