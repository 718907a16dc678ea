//! Reads the image config (`/etc/minke/image.cfg`, see [`ImageConfig::decode`]) and turns it
//! into what the init acts on: unit specs for agents and services (how each is launched, env,
//! cgroup, readiness), sysctl paths and rlimit resources.

use std::collections::BTreeMap;

use minke_protocol::config::{
    Agent, AgentKind, Command, ImageConfig, Readiness, Restart, Service, Task,
};

/// Default environment of every child; a unit's own `env` is applied on top.
pub const DEFAULT_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
];

/// Environment variable naming the readiness descriptor of a `notify` unit.
pub const NOTIFY_ENV: &str = "MINKE_NOTIFY_FD";

/// oom_score_adj of agents: the OOM killer picks a guest memory hog, never an agent.
pub const AGENT_OOM_SCORE_ADJ: i32 = -1000;

/// argv\[0\] of an agent, so that `ps` shows `/init agent control`.
const AGENT_ARGV0: &str = "/init";

/// Errors reading the image config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// Path read.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The bytes are not an image config of this init.
    #[error("cannot decode {path}")]
    Decode {
        /// Path read.
        path: String,
        /// Decoder error.
        source: minke_protocol::config::ConfigDecodeError,
    },
}

/// Loads and decodes the image config at `path`.
pub fn load(path: &str) -> Result<ImageConfig, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &bytes)
}

/// Decodes image config bytes; `path` only names the file in errors.
pub fn parse(path: &str, bytes: &[u8]) -> Result<ImageConfig, ConfigError> {
    ImageConfig::decode(bytes).map_err(|source| ConfigError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// How a unit's process is started; decided when the unit is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Execute a program.
    Exec {
        /// Program to execute.
        program: String,
        /// Full argv including argv\[0\] (which need not be `program`).
        argv: Vec<String>,
    },
    /// Run an agent of this binary: in a forked copy of PID1 when the supervisor holds the
    /// image config to hand over (see `Supervisor::fork_agents`), otherwise by executing
    /// `exe` as `/init agent KIND ARGS…`.
    Agent {
        /// This binary, for the exec.
        exe: String,
        /// Which agent.
        kind: AgentKind,
        /// Its arguments after the kind (`--port 1024`).
        args: Vec<String>,
    },
}

/// Everything needed to start (and restart) one supervised process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// Name: the service name or the agent kind (`control`); also its cgroup and log name.
    pub name: String,
    /// How the process is started.
    pub launch: Launch,
    /// Complete environment (defaults + the unit's own).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Restart policy.
    pub restart: Restart,
    /// Units that must be ready before this one starts.
    pub after: Vec<String>,
    /// Readiness protocol.
    pub readiness: Readiness,
    /// Power the guest off when this unit ends for good.
    pub exit_on_stop: bool,
    /// oom_score_adj (`None`: inherit PID1's, 0).
    pub oom_score_adj: Option<i32>,
    /// Agent: starts with the agents, before the boot stages are done, and counts for the
    /// `ready` marker.
    pub agent: bool,
}

impl UnitSpec {
    /// The program executed (for an agent: this binary, when it is not forked).
    pub fn program(&self) -> &str {
        match &self.launch {
            Launch::Exec { program, .. } => program,
            Launch::Agent { exe, .. } => exe,
        }
    }

    /// The full command line including argv\[0\]; an agent's is `/init agent KIND ARGS…`,
    /// forked or executed.
    pub fn argv(&self) -> Vec<String> {
        match &self.launch {
            Launch::Exec { argv, .. } => argv.clone(),
            Launch::Agent { kind, args, .. } => [AGENT_ARGV0, "agent", kind.name()]
                .into_iter()
                .map(str::to_owned)
                .chain(args.iter().cloned())
                .collect(),
        }
    }
}

/// Environment of a child: the defaults with `extra` on top.
pub fn child_env(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = DEFAULT_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The unit of an agent: an agent of this same binary (`exe`), restarted when it fails (an
/// agent that exits 0 has finished its job: binfmt once it registered), ready when it says so,
/// protected from the OOM killer. (The serial agent is not started at all when the host chose
/// vsock: see `supervise`.)
pub fn agent_unit(agent: &Agent, exe: &str) -> UnitSpec {
    let mut args = Vec::new();
    if let Some(port) = agent.port {
        args.push("--port".to_owned());
        args.push(port.to_string());
    }
    UnitSpec {
        name: agent.kind.name().to_owned(),
        launch: Launch::Agent {
            exe: exe.to_owned(),
            kind: agent.kind,
            args,
        },
        env: child_env(&BTreeMap::new()),
        cwd: "/".to_owned(),
        uid: 0,
        gid: 0,
        restart: Restart::OnFailure,
        after: agent.after.clone(),
        readiness: Readiness::Notify,
        exit_on_stop: false,
        oom_score_adj: Some(AGENT_OOM_SCORE_ADJ),
        agent: true,
    }
}

/// The unit of a service.
pub fn service_unit(svc: &Service) -> UnitSpec {
    let cmd = &svc.command;
    UnitSpec {
        name: svc.name.clone(),
        launch: Launch::Exec {
            program: cmd.argv.first().cloned().unwrap_or_default(),
            argv: cmd.argv.clone(),
        },
        env: child_env(&cmd.env),
        cwd: cmd.cwd.clone().unwrap_or_else(|| "/".to_owned()),
        uid: cmd.uid,
        gid: cmd.gid,
        restart: svc.restart,
        after: svc.after.clone(),
        readiness: svc.readiness,
        exit_on_stop: svc.exit_on_stop,
        oom_score_adj: (svc.oom_score_adj != 0).then_some(svc.oom_score_adj),
        agent: false,
    }
}

/// The unit of an onboot/onshutdown task (run once, never restarted).
pub fn task_unit(task: &Task) -> UnitSpec {
    let Command {
        argv,
        env,
        cwd,
        uid,
        gid,
    } = &task.command;
    UnitSpec {
        name: task.name.clone(),
        launch: Launch::Exec {
            program: argv.first().cloned().unwrap_or_default(),
            argv: argv.clone(),
        },
        env: child_env(env),
        cwd: cwd.clone().unwrap_or_else(|| "/".to_owned()),
        uid: *uid,
        gid: *gid,
        restart: Restart::No,
        after: Vec::new(),
        readiness: Readiness::Started,
        exit_on_stop: false,
        oom_score_adj: None,
        agent: false,
    }
}

/// A unit name is usable as a cgroup and log file name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// Agents then services as units, with the ones that can't run (bad or duplicate name, empty
/// argv) left out and reported as `(name, reason)`.
pub fn units(cfg: &ImageConfig, exe: &str) -> (Vec<UnitSpec>, Vec<(String, String)>) {
    let mut out: Vec<UnitSpec> = Vec::new();
    let mut rejected = Vec::new();
    let all = cfg
        .agents
        .iter()
        .map(|a| agent_unit(a, exe))
        .chain(cfg.services.iter().map(service_unit));
    for unit in all {
        if !valid_name(&unit.name) {
            rejected.push((unit.name, "invalid name".to_owned()));
        } else if out.iter().any(|u| u.name == unit.name) {
            rejected.push((unit.name, "duplicate name".to_owned()));
        } else if unit.argv().is_empty() || unit.program().is_empty() {
            rejected.push((unit.name, "empty argv".to_owned()));
        } else {
            out.push(unit);
        }
    }
    (out, rejected)
}

/// `/proc/sys/…` path of a dotted sysctl key, or `None` if the key could escape /proc/sys.
pub fn sysctl_path(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split(['.', '/']).collect();
    if parts.iter().any(|p| p.is_empty() || *p == "..") {
        return None;
    }
    Some(format!("/proc/sys/{}", parts.join("/")))
}

/// The rlimit resource named `name` (`nofile`, `RLIMIT_NOFILE`, any case).
pub fn rlimit_resource(name: &str) -> Option<rustix::process::Resource> {
    use rustix::process::Resource as R;
    let lower = name.to_ascii_lowercase();
    let short = lower.strip_prefix("rlimit_").unwrap_or(&lower);
    Some(match short {
        "cpu" => R::Cpu,
        "fsize" => R::Fsize,
        "data" => R::Data,
        "stack" => R::Stack,
        "core" => R::Core,
        "rss" => R::Rss,
        "nproc" => R::Nproc,
        "nofile" => R::Nofile,
        "memlock" => R::Memlock,
        "as" => R::As,
        "locks" => R::Locks,
        "sigpending" => R::Sigpending,
        "msgqueue" => R::Msgqueue,
        "nice" => R::Nice,
        "rtprio" => R::Rtprio,
        "rttime" => R::Rttime,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use minke_protocol::config::AgentKind;

    const SAMPLE: &str = r#"{"name":"t","hostname":"h","modules":[],"sysctls":{"vm.swappiness":"0"},
      "rlimits":[{"resource":"nofile","soft":1024,"hard":null}],"disks":[],"onboot":[],
      "agents":[{"kind":"control","port":1024},{"kind":"timesync","after":["serial"]},
        {"kind":"serial"}],
      "services":[{"name":"web","command":{"argv":["/bin/web","-p","80"],
          "env":{"PATH":"/opt/bin","X":"1"}},
        "restart":"always","after":["control"],"readiness":"notify","oom_score_adj":500},
        {"name":"web","command":{"argv":["/bin/other"]}},
        {"name":"../x","command":{"argv":["/bin/x"]}},
        {"name":"empty","command":{"argv":[]}}],
      "onshutdown":[],"binfmt":[],"containers":[],"shutdown_grace_ms":3000}"#;

    /// SAMPLE in the form the builder writes for the init.
    fn sample() -> Vec<u8> {
        let cfg: ImageConfig = serde_json::from_str(SAMPLE).expect("sample is an image config");
        cfg.encode()
    }

    #[test]
    fn sample_config_becomes_units() {
        let cfg = parse("image.cfg", &sample()).expect("sample decodes");
        let (units, rejected) = units(&cfg, "/proc/self/exe");
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["control", "timesync", "serial", "web"]);
        assert_eq!(
            rejected,
            vec![
                ("web".to_owned(), "duplicate name".to_owned()),
                ("../x".to_owned(), "invalid name".to_owned()),
                ("empty".to_owned(), "empty argv".to_owned()),
            ]
        );
        let control = &units[0];
        assert_eq!(control.program(), "/proc/self/exe");
        assert_eq!(
            control.argv(),
            ["/init", "agent", "control", "--port", "1024"]
        );
        assert_eq!(control.readiness, Readiness::Notify);
        assert_eq!(control.restart, Restart::OnFailure);
        assert_eq!(control.oom_score_adj, Some(AGENT_OOM_SCORE_ADJ));
        assert!(control.agent);
        assert_eq!(units[1].argv(), ["/init", "agent", "timesync"]);
        assert_eq!(units[1].after, ["serial"]);
        assert_eq!(units[2].argv(), ["/init", "agent", "serial"]);
        let web = &units[3];
        assert_eq!(web.program(), "/bin/web");
        assert_eq!(web.env["PATH"], "/opt/bin");
        assert_eq!(web.env["HOME"], "/root");
        assert_eq!(web.env["TERM"], "linux");
        assert_eq!(web.env["X"], "1");
        assert_eq!(web.cwd, "/");
        assert_eq!(web.oom_score_adj, Some(500));
        assert!(!web.agent);
    }

    #[test]
    fn bytes_that_are_no_config_get_a_clear_error() {
        let msg = minke_protocol::error_chain(&parse("image.cfg", b"{\"name\": 3}").unwrap_err());
        assert!(
            msg.starts_with("cannot decode image.cfg: not an image config"),
            "{msg}"
        );
        assert!(msg.contains("rebuild the image"), "{msg}");
        let good = sample();
        let msg =
            minke_protocol::error_chain(&parse("image.cfg", &good[..good.len() - 3]).unwrap_err());
        assert!(
            msg.starts_with("cannot decode image.cfg: corrupt image config"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = load("/nonexistent/image.json").expect_err("no file");
        assert_eq!(err.to_string(), "cannot read /nonexistent/image.json");
        assert!(minke_protocol::error_chain(&err)
            .starts_with("cannot read /nonexistent/image.json: No such file"));
    }

    #[test]
    fn agents_are_launched_as_agents_and_services_by_exec() {
        let cfg = parse("image.cfg", &sample()).expect("sample decodes");
        let (units, _) = units(&cfg, "/proc/self/exe");
        assert_eq!(
            units[0].launch,
            Launch::Agent {
                exe: "/proc/self/exe".to_owned(),
                kind: AgentKind::Control,
                args: vec!["--port".to_owned(), "1024".to_owned()],
            }
        );
        assert_eq!(
            units[3].launch,
            Launch::Exec {
                program: "/bin/web".to_owned(),
                argv: vec!["/bin/web".to_owned(), "-p".to_owned(), "80".to_owned()],
            }
        );
    }

    #[test]
    fn agent_without_port_has_no_port_flag() {
        let u = agent_unit(
            &Agent {
                kind: AgentKind::Binfmt,
                port: None,
                after: Vec::new(),
            },
            "/init",
        );
        assert_eq!(u.argv(), ["/init", "agent", "binfmt"]);
    }

    #[test]
    fn sysctl_keys_map_into_proc_sys_only() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Some("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("kernel/pid_max").as_deref(),
            Some("/proc/sys/kernel/pid_max")
        );
        assert_eq!(sysctl_path("net..x"), None);
        assert_eq!(sysctl_path("../../etc/x"), None);
        assert_eq!(sysctl_path(""), None);
    }

    #[test]
    fn rlimit_names() {
        assert_eq!(
            rlimit_resource("nofile"),
            Some(rustix::process::Resource::Nofile)
        );
        assert_eq!(
            rlimit_resource("RLIMIT_CORE"),
            Some(rustix::process::Resource::Core)
        );
        assert_eq!(rlimit_resource("bogus"), None);
    }

    #[test]
    fn names_fit_cgroups_and_log_files() {
        assert!(valid_name("web-1.x@y_z"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
    }
}
