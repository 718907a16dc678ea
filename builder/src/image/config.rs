//! The image config PID1 and the agents read (`/etc/minke/image.cfg`), resolved from the
//! validated spec: commands with their users, services in start order, agents with their
//! ports, the binfmt table.

use std::collections::BTreeMap;

use minke_protocol::config::{self as cfg, AgentKind, ImageConfig};

use super::binfmt;
use crate::spec::{self, Spec};

/// Turns the validated spec into the init's config.
pub fn image_config(
    spec: &Spec,
    modules: Vec<cfg::Module>,
    containers: Vec<cfg::Container>,
) -> ImageConfig {
    let raw = &spec.raw;
    let command = |argv: &[String],
                   env: &BTreeMap<String, String>,
                   cwd: &Option<String>,
                   user: &Option<String>| {
        let (uid, gid) = user.as_deref().and_then(spec::parse_user).unwrap_or((0, 0));
        cfg::Command {
            argv: argv.to_vec(),
            env: env.clone(),
            cwd: cwd.clone(),
            uid,
            gid,
        }
    };
    let task = |t: &spec::RawTask| cfg::Task {
        name: t.name.clone(),
        command: command(&t.command, &t.env, &t.cwd, &t.user),
        on_failure: t.on_failure,
        timeout_ms: t.timeout_ms,
    };
    let by_name: BTreeMap<&str, &spec::RawService> =
        raw.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let services = spec
        .service_order
        .iter()
        .filter_map(|n| by_name.get(n.as_str()))
        .map(|s| cfg::Service {
            name: s.name.clone(),
            command: command(&s.command, &s.env, &s.cwd, &s.user),
            restart: s.restart,
            after: s.after.clone(),
            readiness: s.readiness,
            exit_on_stop: s.exit_on_stop,
            oom_score_adj: s.oom_score_adj,
        })
        .collect();
    let agents = spec
        .agents
        .iter()
        .map(|(kind, port)| cfg::Agent {
            kind: *kind,
            port: port.or(match kind {
                AgentKind::Control => Some(minke_protocol::CONTROL_PORT),
                AgentKind::Timesync => Some(minke_protocol::TIMESYNC_PORT),
                AgentKind::Binfmt | AgentKind::Serial => None,
            }),
            // Agents start together; under the serial transport the time sync agent waits
            // for the serial agent's socket itself, so vsock boots don't wait for it.
            after: Vec::new(),
        })
        .collect();
    let binfmt = raw
        .binfmt
        .iter()
        .filter_map(|name| {
            let guest = minke_protocol::arch::Arch::parse(&raw.arch)
                .unwrap_or(minke_protocol::arch::Arch::X86_64);
            binfmt::entry(name, guest)
        })
        .collect();
    ImageConfig {
        name: raw.name.clone(),
        hostname: raw.hostname.clone().unwrap_or_else(|| raw.name.clone()),
        modules,
        sysctls: raw.sysctls.clone(),
        rlimits: vec![cfg::Rlimit {
            resource: "nofile".into(),
            soft: Some(65536),
            hard: Some(65536),
        }],
        disks: raw
            .disks
            .iter()
            .map(|d| cfg::DiskMount {
                label: d.label.clone(),
                mountpoint: d.mountpoint.clone(),
                fstype: d.fstype.clone(),
                options: d.options.clone(),
                tmpfs_fallback: true,
            })
            .collect(),
        onboot: raw.onboot.iter().map(task).collect(),
        agents,
        services,
        onshutdown: raw.onshutdown.iter().map(task).collect(),
        binfmt,
        containers,
        shutdown_grace_ms: raw.shutdown_grace_ms,
        share_modules: Vec::new(),
        net_modules: Vec::new(),
        image_modules: Vec::new(),
        pci_modules: Vec::new(),
        microvm_modules: Vec::new(),
    }
}
