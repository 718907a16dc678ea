//! `minke run`, `exec`, `ps`, `logs`, `cp` and `stop`: the CLI faces of the host shim's `Vm`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use minke::image::addon::Addition;
use minke::image::{self, BuildOptions, Image};
use minke_protocol::config::BootTimeline;
use minke_protocol::shares::ShareKind;
use minke_shim::{
    Accel, DiskFormat, DiskSpec, EfiBoot, EfiMedium, ExecRequest, NetBackend, NetMode,
    ShareBackend, ShareSpec, Stdin, Transport, Vm, VmConfig,
};

use crate::progress::Progress;

/// Options of `minke run`.
pub struct RunArgs {
    pub image: Option<PathBuf>,
    pub firmware: Option<PathBuf>,
    pub mem: u32,
    pub cpus: u32,
    pub disks: Vec<String>,
    pub publish: Vec<String>,
    pub env: Vec<String>,
    pub data: Vec<PathBuf>,
    pub console: bool,
    pub timeout: u64,
    pub name: Option<String>,
    pub container: Option<String>,
    pub boot_chart: Option<PathBuf>,
    pub accel: Accel,
    pub transport: Transport,
    pub machine: minke_shim::Machine,
    pub shares: Vec<String>,
    pub share_backend: ShareBackend,
    pub adds: Vec<String>,
    pub net: Option<NetMode>,
    pub net_backend: NetBackend,
    pub runner: bool,
    pub pass_env: Vec<String>,
    pub oci_image: Option<String>,
    pub platform: Option<String>,
    pub insecure_registries: Vec<String>,
    pub cmd: Vec<String>,
}

/// Whether runner mode passes the host variable `name` to the program: what cargo sets for
/// a test or a binary (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, `CARGO_BIN_EXE_*`,
/// `CARGO_CRATE_NAME`, `CARGO_TARGET_TMPDIR`, `CARGO_PRIMARY_PACKAGE`) and `RUST_*`, never a
/// credential (registry tokens live in `CARGO_REGISTRY*` variables) whatever its name.
fn passes_to_runner(name: &str) -> bool {
    let secret = ["TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"]
        .iter()
        .any(|w| name.contains(w));
    let cargo = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_TARGET_TMPDIR" | "CARGO_PRIMARY_PACKAGE"
        );
    !secret && (cargo || name.starts_with("RUST_"))
}

/// What runner mode (`minke run --runner -- PROGRAM ARGS…`, cargo's `target.*.runner`) adds to
/// a run: the program from the host with its libraries, the current directory shared at the
/// same path and used as the working directory, and cargo's environment.
struct Runner {
    /// The current directory, canonical: the share and the guest's working directory.
    cwd: PathBuf,
    /// The environment the program gets.
    env: Vec<(String, String)>,
}

impl Runner {
    fn new(a: &RunArgs) -> Result<(Runner, Addition, ShareSpec)> {
        let Some(prog) = a.cmd.first() else {
            bail!("--runner needs the program to run: minke run --runner -- PROGRAM [ARGS…]");
        };
        let cwd = std::env::current_dir()
            .and_then(std::fs::canonicalize)
            .context("cannot read the current directory")?;
        let prog_path = std::fs::canonicalize(prog)
            .with_context(|| format!("--runner: cannot find the program {prog}"))?;
        // Under the current directory the share shows the program; only its libraries must
        // come along then (and a program there may sit below /tmp, which an archive cannot).
        let addition = Addition {
            host: PathBuf::from(prog),
            guest: None,
            only_libraries: prog_path.starts_with(&cwd),
        };
        let share = ShareSpec {
            host: cwd.clone(),
            guest: None,
            readonly: false,
        };
        let env = std::env::vars()
            .filter(|(k, _)| passes_to_runner(k) || a.pass_env.contains(k))
            .collect();
        Ok((Runner { cwd, env }, addition, share))
    }
}

/// Grace period between asking the guest to power off and killing QEMU.
const GRACE: Duration = Duration::from_secs(15);

/// `$XDG_DATA_HOME/minke/disks/VM` (fallback `~/.local/share`): data disks outlive VMs.
fn disk_dir(vm: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("minke/disks").join(vm)
}

/// Builds the spec (through the cache) or opens a built image directory.
/// Whether `arg` names an image in a registry rather than a local spec or image: no such
/// path here, and `REGISTRY/NAME:TAG` or `…@sha256:` in shape.
pub fn is_registry_ref(arg: &Path) -> bool {
    let s = arg.to_string_lossy();
    !arg.exists()
        && s.contains('/')
        && (s.contains('@') || s.rsplit('/').next().is_some_and(|last| last.contains(':')))
        && !s.ends_with(".yml")
        && !s.ends_with(".yaml")
}

/// Pulls the minke image `reference` into the cache (`pulled/DIGEST/`) and opens it.
pub fn pull_image(
    reference: &str,
    insecure: Vec<String>,
    progress: &dyn Fn(&str),
) -> Result<Image> {
    let cache = minke::layer::Cache::default_location();
    let registry = crate::run_image::registry(insecure)?;
    // The tag resolves to a digest; an image already pulled under it is not fetched again.
    let (_, digest) = registry.raw_manifest(reference)?;
    let out = cache
        .dir("pulled")
        .join(digest.trim_start_matches("sha256:"));
    if let Ok(img) = Image::open(&out) {
        return Ok(img);
    }
    progress(&format!("pulling {reference}"));
    let (img, _) = minke::image::publish::pull(reference, &registry, &out, progress)?;
    Ok(img)
}

/// A release format booted through UEFI firmware: `NAME.efi`, `NAME.img`, `NAME.qcow2` or
/// `NAME.iso`, with the image's `NAME.manifest.json` beside it (the files `minke build
/// --format` writes); `None` when `p` is no such file.
fn release_format(p: &Path) -> Option<Result<(Image, EfiMedium)>> {
    let ext = p.extension()?.to_str()?;
    let medium = match ext {
        "efi" => EfiMedium::Uki(p.to_path_buf()),
        "img" => EfiMedium::Disk {
            path: p.to_path_buf(),
            format: DiskFormat::Raw,
        },
        "qcow2" => EfiMedium::Disk {
            path: p.to_path_buf(),
            format: DiskFormat::Qcow2,
        },
        "iso" => EfiMedium::Cdrom(p.to_path_buf()),
        _ => return None,
    };
    if !p.is_file() {
        return None;
    }
    let stem = p.file_stem()?.to_string_lossy().into_owned();
    let manifest = p.with_file_name(format!("{stem}.manifest.json"));
    Some(
        Image::open(&manifest)
            .with_context(|| {
                format!(
                    "{} boots through UEFI, and minke needs its image's manifest beside it \
                     ({}) to know its disks and features",
                    p.display(),
                    manifest.display()
                )
            })
            .map(|img| (img, medium)),
    )
}

fn resolve_image(arg: Option<&Path>, insecure: &[String], progress: &Progress) -> Result<Image> {
    match arg {
        Some(p) if p.is_dir() || p.extension().is_some_and(|e| e == "json") => Ok(Image::open(p)?),
        Some(p) if is_registry_ref(p) => {
            pull_image(&p.to_string_lossy(), insecure.to_vec(), &|m| {
                progress.step(m)
            })
        }
        spec => {
            let cache = minke::layer::Cache::default_location();
            let name = match spec {
                Some(p) => p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                None => "default".into(),
            };
            let mut opts =
                BuildOptions::new(spec.map(Path::to_path_buf), cache.dir("images").join(name));
            opts.cache = cache;
            opts.registry.insecure = insecure.to_vec();
            progress.step("building image");
            Ok(image::build(&opts, &|m| progress.step(m))?)
        }
    }
}

fn parse_publish(s: &str) -> Result<(u16, u16)> {
    let (h, g) = s
        .split_once(':')
        .with_context(|| format!("--publish {s}: use HOST_PORT:GUEST_PORT"))?;
    Ok((
        h.parse()
            .with_context(|| format!("--publish {s}: bad host port"))?,
        g.parse()
            .with_context(|| format!("--publish {s}: bad guest port"))?,
    ))
}

fn parse_disk(s: &str, vm: &str, sizes: &[(String, Option<u64>)]) -> Result<DiskSpec> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let (label, path) = match first.split_once('=') {
        Some((l, p)) => (l.to_string(), PathBuf::from(p)),
        None => (first.to_string(), disk_dir(vm).join(format!("{first}.img"))),
    };
    let mut size = sizes
        .iter()
        .find(|(l, _)| *l == label)
        .and_then(|(_, s)| *s)
        .unwrap_or(256 << 20);
    let mut format = if path.extension().is_some_and(|e| e == "qcow2") {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    };
    for p in parts {
        match p.split_once('=') {
            Some(("size", v)) => {
                size = minke::spec::parse_size(v)
                    .with_context(|| format!("--disk {s}: bad size {v:?}"))?
            }
            Some(("format", "raw")) => format = DiskFormat::Raw,
            Some(("format", "qcow2")) => format = DiskFormat::Qcow2,
            _ => bail!(
                "--disk {s}: unknown option {p:?}; use LABEL=PATH[,size=SIZE][,format=raw|qcow2]"
            ),
        }
    }
    Ok(DiskSpec {
        label,
        path,
        size,
        format,
    })
}

/// `minke run`: returns the exit code (CMD's, or 0 when the guest powered off by itself).
pub fn run(a: RunArgs) -> Result<u8> {
    let runner = if a.runner {
        Some(Runner::new(&a)?)
    } else {
        None
    };
    let progress = Progress::new();
    let (img, medium) = match a.image.as_deref().and_then(release_format) {
        Some(r) => {
            let (img, medium) = r?;
            (img, Some(medium))
        }
        None => (
            resolve_image(a.image.as_deref(), &a.insecure_registries, &progress)?,
            None,
        ),
    };
    if medium.is_some() && !a.adds.is_empty() {
        bail!("--add puts files in the initrd, and a release format's initrd is sealed in it: boot the image directory instead");
    }
    // Runs of a runner may overlap (several cargo invocations): one VM name each.
    let default_name = match &runner {
        Some(_) => format!("runner-{}", std::process::id()),
        None => img.name.clone(),
    };
    let name = a.name.clone().unwrap_or(default_name);
    if a.oci_image.is_some() && (a.container.is_some() || a.runner) {
        bail!("--image runs its own container: it goes with neither --container nor --runner");
    }
    if a.platform.is_some() && a.oci_image.is_none() {
        bail!("--platform chooses among the platforms of --image REF: give --image too");
    }
    let run_image = match &a.oci_image {
        Some(r) => Some(crate::run_image::prepare(
            r,
            a.platform.as_deref(),
            a.insecure_registries.clone(),
            &|m| progress.step(m),
        )?),
        None => None,
    };
    if let Some(p) = &run_image {
        check_emulation(&img, &p.arch)?;
    }
    let mut cfg = VmConfig::new(name.clone(), &img.kernel, &img.initrd);
    cfg.arch = minke_protocol::arch::Arch::parse(&img.manifest.arch).with_context(|| {
        format!(
            "image {} is for {:?}, an architecture this minke cannot boot",
            img.name, img.manifest.arch
        )
    })?;
    let arch = cfg.arch;
    cfg.efi = medium.map(|medium| EfiBoot {
        firmware: a
            .firmware
            .clone()
            .unwrap_or_else(|| PathBuf::from(minke_shim::config::default_firmware(arch))),
        medium,
    });
    cfg.run_image = run_image.as_ref().map(|p| p.disk.clone());
    cfg.cmdline = img.cmdline.clone();
    cfg.mem_mib = a.mem;
    cfg.cpus = a.cpus;
    cfg.accel = a.accel;
    cfg.transport = a.transport;
    cfg.machine = a.machine;
    cfg.microvm_kernel = img.manifest.microvm;
    // On microvm a bzImage's kernel is entered directly (PVH): no real-mode start, no
    // decompressor. Unpacked once per kernel into the cache; the image keeps its bzImage.
    if cfg.microvm_kernel
        && cfg.efi.is_none()
        && cfg.machine != minke_shim::Machine::Standard
        && cfg.arch == minke_protocol::arch::Arch::X86_64
    {
        progress.step("preparing the kernel");
        let cache = minke::layer::Cache::default_location();
        match minke::kernel::pvh::cached(&img.kernel, Some(&img.manifest.kernel.sha256), &cache) {
            Ok(elf) => cfg.pvh_kernel = elf,
            Err(e) => eprintln!(
                "warning: no direct (PVH) boot of this kernel ({e}); booting the bzImage as it \
                 is (`--machine standard` skips this step)"
            ),
        }
    }
    cfg.console_to_terminal = a.console;
    for p in &a.publish {
        cfg.publish.push(parse_publish(p)?);
    }
    for s in &a.shares {
        cfg.shares
            .push(ShareSpec::parse(s).map_err(|e| anyhow::anyhow!("--share: {e}"))?);
    }
    cfg.guest_share_kinds = Some(
        img.manifest
            .shares
            .iter()
            .filter_map(|k| match k.as_str() {
                "virtiofs" => Some(ShareKind::Virtiofs),
                "9p" => Some(ShareKind::NineP),
                _ => None,
            })
            .collect(),
    );
    cfg.share_backend = a.share_backend;
    let net = a.net.unwrap_or(match img.manifest.default_network {
        minke::spec::RawNetwork::None => NetMode::None,
        minke::spec::RawNetwork::User => NetMode::User,
    });
    if net == NetMode::User && !img.manifest.network {
        bail!(
            "image {} cannot take a network card (its spec says `allow_network: false`, or its \
             kernel has no virtio-net): rebuild it, or boot another image",
            img.name
        );
    }
    cfg.net = net;
    cfg.net_backend = a.net_backend;
    let mut adds = a
        .adds
        .iter()
        .map(|s| Addition::parse(s).map_err(|e| anyhow::anyhow!("--add {e}")))
        .collect::<Result<Vec<_>>>()?;
    if let Some((_, addition, share)) = &runner {
        adds.push(addition.clone());
        cfg.shares.push(share.clone());
    }
    if !adds.is_empty() {
        progress.step("adding host files");
        let image_files = img.manifest.files.iter().map(|f| f.path.clone()).collect();
        let archive = minke::image::addon::archive(
            &adds,
            &image_files,
            &minke::layer::Cache::default_location(),
            minke::epoch_from_env(),
        )?;
        cfg.extra_initrds.push(archive);
    }
    let mut labels: Vec<String> = Vec::new();
    for d in &a.disks {
        let spec = parse_disk(d, &name, &img.disks)?;
        labels.push(spec.label.clone());
        cfg.disks.push(spec);
    }
    // A release disk carries the data disks as partitions of its own (found by label, and
    // written only to the boot's throw-away overlay): nothing to attach for them.
    let partitions_serve = matches!(
        cfg.efi.as_ref().map(|e| &e.medium),
        Some(EfiMedium::Disk { .. })
    );
    for (label, size) in &img.disks {
        if !labels.contains(label) && !partitions_serve {
            let path = disk_dir(&name).join(format!("{label}.img"));
            cfg.disks.push(DiskSpec {
                label: label.clone(),
                path,
                size: size.unwrap_or(minke_protocol::disk::DEFAULT_SIZE),
                format: DiskFormat::Raw,
            });
        }
    }
    let modular = !img.manifest.modules.is_empty();
    if !cfg.disks.is_empty()
        && modular
        && !img.manifest.modules.iter().any(|m| m.name == "virtio_blk")
    {
        eprintln!(
            "warning: image {} has no virtio_blk module, so the guest cannot see --disk; declare the disk under `disks:` in its spec",
            img.name
        );
    }
    if !a.env.is_empty() {
        let mut env = String::new();
        for e in &a.env {
            if !e.contains('=') {
                bail!("--env {e}: use KEY=VALUE");
            }
            env.push_str(e);
            env.push('\n');
        }
        cfg.runtime_config.push(("env".into(), env.into_bytes()));
    }
    for f in &a.data {
        let bytes = std::fs::read(f).with_context(|| format!("--data {}", f.display()))?;
        let base = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        cfg.runtime_config.push((base, bytes));
    }

    // Whether stopping after a command must go through the guest's own power-off: data disks
    // to unmount, onshutdown tasks to run, or writable shares, whose writes through mapped
    // memory may still sit in the guest's page cache.
    let guest_must_stop = !cfg.disks.is_empty()
        || cfg.shares.iter().any(|s| !s.readonly)
        || cfg.net != NetMode::None
        || !img.manifest.onshutdown.is_empty();
    progress.step("booting");
    let started = Instant::now();
    let mut vm = Vm::boot(cfg)?;
    progress.step("waiting for the guest agent");
    vm.wait_ready(Duration::from_secs(a.timeout))?;
    drop(progress);

    if a.cmd.is_empty() && run_image.is_none() {
        let code = wait_for_poweroff(&mut vm)?;
        chart(&vm, a.boot_chart.as_deref(), started, None)?;
        return Ok(code);
    }
    let mut req = ExecRequest {
        argv: a.cmd.clone(),
        container: a.container.clone(),
        ..Default::default()
    };
    if let Some(p) = &run_image {
        req.argv = p.argv(&a.cmd)?;
        req.env = p.env();
        req.container = Some(minke_protocol::image::CONTAINER.into());
        if !p.run.working_dir.is_empty() {
            req.cwd = Some(p.run.working_dir.clone());
        }
        req.uid = Some(p.uid);
        req.gid = Some(p.gid);
    }
    if let Some((r, _, _)) = &runner {
        req.cwd = Some(r.cwd.to_string_lossy().into_owned());
        req.env = r.env.clone();
    }
    let stdin = if std::io::stdin().is_terminal() {
        Stdin::Null
    } else {
        Stdin::Reader(Box::new(std::io::stdin()))
    };
    let cmd_start = started.elapsed();
    let code = vm
        .exec(req, stdin, &mut std::io::stdout(), &mut std::io::stderr())
        .map_err(|e| match a.cmd.first() {
            Some(argv0) if run_image.is_none() => suggest_add(e, argv0, true),
            _ => e.into(),
        })?;
    let cmd_end = started.elapsed();
    chart(
        &vm,
        a.boot_chart.as_deref(),
        started,
        Some((cmd_start, cmd_end)),
    )?;
    if guest_must_stop {
        vm.poweroff(GRACE)?;
    } else {
        // Nothing in the guest outlives it: its files are in memory, and every write to a
        // share already reached the host. Stopping QEMU now saves the guest's power-off.
        vm.kill();
    }
    if runner.is_some() && a.name.is_none() {
        // A runner's VM is one process's: its state and its data disks go with it.
        let state = vm.state_dir().to_path_buf();
        drop(vm);
        let _ = std::fs::remove_dir_all(state);
        let _ = std::fs::remove_dir_all(disk_dir(&name));
    }
    Ok(exit_byte(code))
}

/// Fails unless the guest image can run binaries of OCI architecture `arch`: its own, or one
/// it carries a QEMU user emulator for (registered by its binfmt agent).
fn check_emulation(img: &Image, arch: &str) -> Result<()> {
    let native = match img.manifest.arch.as_str() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    if arch == native {
        return Ok(());
    }
    let qemu = match arch {
        "arm64" => "aarch64",
        "386" => "i386",
        a => a,
    };
    let emulator = format!("qemu-{qemu}-static");
    let has = img
        .manifest
        .files
        .iter()
        .any(|f| f.path.rsplit('/').next() == Some(emulator.as_str()));
    if !has {
        bail!(
            "image {} cannot run {arch} binaries: it has no {emulator}; boot an image with the \
             binfmt agent, qemu-user-static and `binfmt: [{qemu}]` (examples/cross-arch.yml), \
             or pick the {native} platform",
            img.name
        );
    }
    Ok(())
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

fn chart(
    vm: &Vm,
    out: Option<&Path>,
    _started: Instant,
    cmd: Option<(Duration, Duration)>,
) -> Result<()> {
    let Some(out) = out else { return Ok(()) };
    let info = vm.info()?;
    let timeline: BootTimeline = serde_json::from_str(&info.boot_json)
        .context("the guest's boot timeline is not valid JSON")?;
    let ready = vm.ready_after().unwrap_or_default();
    let svg = minke_shim::boot_chart_svg(&timeline, ready, cmd);
    minke::layer::write_atomic(out, svg.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Waits until the guest powers off; Ctrl-C asks it to shut down cleanly (then kills it after
/// a grace period).
fn wait_for_poweroff(vm: &mut Vm) -> Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    eprintln!("minke: {} is running; Ctrl-C powers it off", vm.name());
    while vm.is_running() {
        if stop.load(Ordering::SeqCst) {
            eprintln!("minke: powering off {}", vm.name());
            vm.poweroff(GRACE)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(0)
}

/// Attaches to VM `name`, waiting up to `timeout` while it boots (with a line on a terminal).
fn attach(name: &str, timeout: Duration) -> Result<Vm> {
    let mut vm = Vm::attach_now(name, timeout)?;
    if !vm.is_booted() && std::io::stderr().is_terminal() {
        eprintln!(
            "minke: {name} is booting; waiting up to {}s for it to be ready",
            timeout.as_secs()
        );
    }
    vm.wait_ready(timeout)?;
    Ok(vm)
}

/// `minke exec NAME -- CMD`: CMD's exit code, or an error; never 0 without the guest's word.
pub fn exec(
    name: &str,
    container: Option<String>,
    timeout: Duration,
    cmd: Vec<String>,
) -> Result<u8> {
    let vm = attach(name, timeout)?;
    let req = ExecRequest {
        argv: cmd,
        container,
        ..Default::default()
    };
    let stdin = if std::io::stdin().is_terminal() {
        Stdin::Null
    } else {
        Stdin::Reader(Box::new(std::io::stdin()))
    };
    let argv0 = req.argv.first().cloned().unwrap_or_default();
    let code = vm
        .exec(req, stdin, &mut std::io::stdout(), &mut std::io::stderr())
        .map_err(|e| suggest_add(e, &argv0, false))?;
    Ok(exit_byte(code))
}

/// An exec error, with a suggestion when the program is a host path the image lacks:
/// `minke run --add` brings it (and its libraries) along for one boot.
fn suggest_add(e: minke_shim::VmError, argv0: &str, in_run: bool) -> anyhow::Error {
    let missing = matches!(
        &e,
        minke_shim::VmError::Agent(minke_shim::client::AgentError::Guest(m))
            if *m == minke_protocol::msg::program_not_found(argv0)
    );
    let on_host = argv0.starts_with('/') && Path::new(argv0).is_file();
    if !(missing && on_host) {
        return e.into();
    }
    let how = if in_run {
        format!("add `--add {argv0}` to this `minke run`")
    } else {
        format!("boot with `minke run --add {argv0} …`")
    };
    anyhow::Error::new(e).context(format!(
        "{argv0} is on this host but not in the image: {how} to bring it (and its shared \
         libraries) along without a rebuild"
    ))
}

/// `minke ps`.
pub fn ps(out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{:<20} {:>8} {:<6} {:<8} {:<12} {:<6} {:<16} SHARES",
        "NAME", "QEMU", "ACCEL", "MACHINE", "TRANSPORT", "NET", "PUBLISH"
    )?;
    for v in minke_shim::list_vms()? {
        let publish: Vec<String> = v
            .run
            .publish
            .iter()
            .map(|(h, g)| format!("{h}->{g}"))
            .collect();
        let shares: Vec<String> = v
            .run
            .shares
            .iter()
            .map(|s| {
                format!(
                    "{}->{} ({}{})",
                    s.host.display(),
                    s.share.path,
                    s.share.kind.name(),
                    if s.share.readonly { ", ro" } else { "" }
                )
            })
            .collect();
        writeln!(
            out,
            "{:<20} {:>8} {:<6} {:<8} {:<12} {:<6} {:<16} {}",
            v.run.name,
            v.run.qemu_pid,
            format!("{:?}", v.run.accel).to_lowercase(),
            v.run.machine.map_or("-", |m| m.name()),
            format!("{:?}", v.run.transport).to_lowercase(),
            v.run.net.map_or("-", |n| n.name()),
            if publish.is_empty() {
                "-".to_owned()
            } else {
                publish.join(",")
            },
            if shares.is_empty() {
                "-".to_owned()
            } else {
                shares.join(", ")
            }
        )?;
    }
    Ok(())
}

/// `minke logs NAME [-f]`.
pub fn logs(
    name: &str,
    service: Option<&str>,
    follow: bool,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<()> {
    let vm = attach(name, timeout)?;
    let mut seen = vm.logs(service)?;
    out.write_all(&seen)?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(now) = vm.logs(service) else { break };
        // The ring buffers rotate: print what follows the longest known prefix.
        let start = if now.starts_with(&seen) {
            seen.len()
        } else {
            0
        };
        out.write_all(&now[start..])?;
        out.flush()?;
        seen = now;
    }
    Ok(())
}

/// `minke cp SRC DST`, one side `NAME:PATH`.
pub fn cp(src: &str, dst: &str, timeout: Duration, preserve: bool) -> Result<()> {
    fn split(s: &str) -> Option<(&str, &str)> {
        let (n, p) = s.split_once(':')?;
        (!n.is_empty() && !n.contains('/') && p.starts_with('/')).then_some((n, p))
    }
    match (split(src), split(dst)) {
        (Some((name, path)), None) => {
            let vm = attach(name, timeout)?;
            // Like cp -r: into an existing directory, under the guest path's own name.
            let dst = Path::new(dst);
            let local = if dst.is_dir() {
                let base = Path::new(path).file_name().with_context(|| {
                    format!("{src} has no name to give it in {}", dst.display())
                })?;
                dst.join(base)
            } else {
                dst.to_path_buf()
            };
            let local = local.as_path();
            // A directory in the guest comes back as a tree, never merged into one that is
            // already there: the guest's files would replace the host's.
            match vm.get_file(path, local) {
                Ok(_) => Ok(()),
                Err(_) if local.symlink_metadata().is_ok_and(|m| m.is_dir()) => bail!(
                    "{} already exists: the guest directory {src} is not merged into it; remove \
                     it or name another destination",
                    local.display()
                ),
                Err(file_err) => {
                    let opts = minke_shim::getfiles::GetOptions { preserve };
                    vm.get_tree_with(path, local, opts).map_err(|tree_err| {
                        anyhow::anyhow!(
                            "cannot copy {src}: as a file: {}; as a directory: {}",
                            minke_shim::error_chain(&file_err),
                            minke_shim::error_chain(&tree_err)
                        )
                    })
                }
            }
        }
        (None, Some((name, path))) => {
            let vm = attach(name, timeout)?;
            let local = Path::new(src);
            if local.is_dir() {
                Ok(vm.put_tree(local, path)?)
            } else {
                Ok(vm.put_file(local, path)?)
            }
        }
        _ => bail!("minke cp: exactly one side must be NAME:/absolute/path (e.g. `minke cp ./f default:/tmp/f`)"),
    }
}

/// `minke stop NAME`.
pub fn stop(name: &str) -> Result<()> {
    let mut vm = Vm::attach(name)?;
    match vm.poweroff(GRACE)? {
        minke_shim::PowerOff::Clean => eprintln!("minke: {name} powered off"),
        minke_shim::PowerOff::Killed => eprintln!(
            "minke: {name} did not power off within {}s and was killed",
            GRACE.as_secs()
        ),
    }
    Ok(())
}
