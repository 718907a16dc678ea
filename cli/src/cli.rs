//! Argument definitions and the one `match` that shows the whole program.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use minke::archive::compress::Compression;
use minke::image::{self, BuildOptions, Image};

use crate::progress::Progress;

/// Default of `--timeout` for commands that attach to a VM which may still be booting.
const ATTACH_TIMEOUT_SECS: u64 = minke_shim::ATTACH_TIMEOUT.as_secs();

/// Build immutable, stateless guest OS images and run them under QEMU.
#[derive(Parser)]
#[command(name = "minke", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per process: the size of its largest variant (`run`) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Build an image from a spec (default: the built-in examples/default.yml).
    Build {
        /// Spec file.
        spec: Option<PathBuf>,
        /// Output directory.
        #[arg(short, long, default_value = "out")]
        output: PathBuf,
        /// Initramfs compression (overrides the spec).
        #[arg(long, value_enum)]
        compression: Option<CompressionArg>,
        /// Ask apt again for Debian package versions, and registries for the digests of image
        /// tags, instead of reusing the cached resolution and the spec's lock file.
        #[arg(long)]
        refresh: bool,
        /// Speak plain HTTP to this registry (HOST[:PORT]); registries on loopback addresses
        /// always are.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        /// Also write this format (repeatable), each reproducible: `tar` (NAME.tar, the image's
        /// files for hand-off), `uki` (NAME.efi, a Unified Kernel Image), `disk` (NAME.img, a
        /// GPT disk whose EFI system partition boots the UKI, data disks as partitions),
        /// `qcow2` (NAME.qcow2, that disk), `iso` (NAME.iso, a hybrid EFI ISO); `initrd`, the
        /// image directory, is always written.
        #[arg(long = "format", value_enum)]
        formats: Vec<FormatArg>,
        /// Take layers from the layer cache this registry repository (REGISTRY/NAME) shares,
        /// before producing them here (a fleet of CI runners builds each layer once).
        #[arg(long, value_name = "REGISTRY/NAME")]
        cache_from: Option<String>,
        /// Push the build's layers that this registry repository lacks, each as an artifact
        /// tagged `layer-KEY` (KEY: the digest of its inputs).
        #[arg(long, value_name = "REGISTRY/NAME")]
        cache_to: Option<String>,
        /// Build for this architecture instead of the spec's: x86_64 or aarch64.
        #[arg(long, value_name = "ARCH")]
        arch: Option<String>,
        /// Boot another kernel than the spec's: `build` (built from kernel-config/),
        /// `build:FRAGMENT,…`, `package:NAME`, or a kernel image path.
        #[arg(long, value_name = "KERNEL")]
        kernel: Option<String>,
    },
    /// Publish a built image to a registry as an OCI artifact (kernel, initrd, cmdline,
    /// manifest and SBOM as layers); prints the manifest's digest, the same for the same image.
    Push {
        /// Image directory (a `minke build` output).
        image: PathBuf,
        /// Where: REGISTRY/NAME:TAG.
        reference: String,
        /// Speak plain HTTP to this registry (HOST[:PORT]); loopback registries always are.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
    },
    /// Fetch an image `minke push` published, by digest through the cache, into a directory.
    Pull {
        /// REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST.
        reference: String,
        /// Output directory.
        #[arg(short, long, default_value = "out")]
        output: PathBuf,
        /// Speak plain HTTP to this registry (HOST[:PORT]); loopback registries always are.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
    },
    /// List an image's manifest: kernel, layers, modules and every file.
    Inspect {
        /// Image directory or manifest file.
        image: PathBuf,
    },
    /// Say what differs between two images.
    Diff {
        /// First image (directory or manifest).
        a: PathBuf,
        /// Second image.
        b: PathBuf,
    },
    /// ELF helpers.
    Elf {
        #[command(subcommand)]
        command: ElfCmd,
    },
    /// Kernel helpers.
    Kernel {
        #[command(subcommand)]
        command: KernelCmd,
    },
    /// Spec helpers.
    Spec {
        #[command(subcommand)]
        command: SpecCmd,
    },
    /// Boot an image (building a spec first) and run a command in it, or run until power off.
    Run {
        /// Spec file, built image directory, a release format beside its manifest (NAME.efi,
        /// NAME.img, NAME.qcow2, NAME.iso: booted through UEFI firmware), or an image `minke
        /// push` published (REGISTRY/NAME:TAG), pulled into the cache (default: the built-in
        /// default spec).
        image: Option<PathBuf>,
        /// UEFI firmware for booting a release format (default: Debian's OVMF,
        /// /usr/share/ovmf/OVMF.fd; for aarch64 its AAVMF, /usr/share/AAVMF/AAVMF_CODE.fd).
        #[arg(long, value_name = "FILE")]
        firmware: Option<PathBuf>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512)]
        mem: u32,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Data disk: LABEL[=PATH][,size=SIZE][,format=raw|qcow2]; created and formatted on first use.
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Forward host TCP port to guest TCP port: HOST:GUEST.
        #[arg(long)]
        publish: Vec<String>,
        /// KEY=VALUE put in the guest's /run/config/env.
        #[arg(long)]
        env: Vec<String>,
        /// File copied to the guest's /run/config/.
        #[arg(long)]
        data: Vec<PathBuf>,
        /// Show the guest's serial console.
        #[arg(long)]
        console: bool,
        /// Seconds to wait for the guest agent.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// VM name (default: the image name).
        #[arg(long)]
        name: Option<String>,
        /// Run CMD inside this container of the image.
        #[arg(long)]
        container: Option<String>,
        /// Draw the boot timeline to this SVG file.
        #[arg(long)]
        boot_chart: Option<PathBuf>,
        /// Accelerator.
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelArg,
        /// Host-guest transport.
        #[arg(long, value_enum, default_value = "auto")]
        transport: TransportArg,
        /// QEMU machine: `auto` boots on microvm (no PCI bus, no firmware to probe: faster)
        /// when the image's kernel can, else on the standard one (q35, or virt on aarch64)
        #[arg(long, value_enum, default_value = "auto")]
        machine: MachineArg,
        /// Share a host directory: HOST_DIR[:GUEST_DIR][:ro] (the guest path defaults to the
        /// host's); mounted before CMD runs, writable unless `:ro`.
        #[arg(long = "share", value_name = "HOST_DIR[:GUEST_DIR][:ro]")]
        shares: Vec<String>,
        /// How shares reach the guest: virtio-fs (virtiofsd), or 9p (QEMU's own server).
        #[arg(long, value_enum, default_value = "auto")]
        share_backend: ShareBackendArg,
        /// Put a host file or directory in the guest for this boot: HOST_PATH[:GUEST_PATH]
        /// (default: the same path); a program brings its shared libraries. The image on disk
        /// is unchanged.
        #[arg(long = "add", value_name = "HOST_PATH[:GUEST_PATH]")]
        adds: Vec<String>,
        /// The guest's network: `user` gives it a card with user-mode networking (passt, or
        /// QEMU's slirp): outbound connections through this host, which it reaches at the
        /// gateway address 10.0.2.2; `none` leaves vsock as its only link. Default: the
        /// image's `network:` (itself `none` by default).
        #[arg(long, value_enum)]
        net: Option<NetArg>,
        /// Who serves `--net user`.
        #[arg(long, value_enum, default_value = "auto")]
        net_backend: NetBackendArg,
        /// Run this container image from a registry (REGISTRY/NAME:TAG or …@sha256:…) in the
        /// guest: pulled and converted once (cached by digest), attached read-only under a
        /// writable overlay; CMD, or else the image's entrypoint and command, runs in it with
        /// the image's environment, working directory and user.
        #[arg(long = "image", value_name = "REF")]
        oci_image: Option<String>,
        /// The platform of --image to run (linux/arm64, linux/arm/v7…; default: the host's);
        /// a foreign one runs through the guest's binfmt_misc emulators.
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// Speak plain HTTP to this registry (HOST[:PORT]); registries on loopback addresses
        /// always are.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        /// Runner mode, for cargo's `target.<triple>.runner`: CMD's program is a host path,
        /// brought along with its libraries; the current directory is shared at the same path
        /// and is CMD's working directory; CARGO_* and RUST_* variables pass through.
        #[arg(long)]
        runner: bool,
        /// Pass this host environment variable through to CMD (runner mode).
        #[arg(long = "pass-env", value_name = "NAME")]
        pass_env: Vec<String>,
        /// Command to run in the guest; its exit code becomes minke's.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Run a command in a running VM.
    Exec {
        /// VM name.
        name: String,
        /// Run inside this container of the image.
        #[arg(long)]
        container: Option<String>,
        /// Seconds to wait for a VM that is still booting.
        #[arg(long, default_value_t = ATTACH_TIMEOUT_SECS)]
        timeout: u64,
        /// Command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List running VMs.
    Ps,
    /// Print a running VM's service logs.
    Logs {
        /// VM name.
        name: String,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Seconds to wait for a VM that is still booting.
        #[arg(long, default_value_t = ATTACH_TIMEOUT_SECS)]
        timeout: u64,
    },
    /// Copy files or trees between host and guest: one side is NAME:/path.
    Cp {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
        /// Seconds to wait for a VM that is still booting.
        #[arg(long, default_value_t = ATTACH_TIMEOUT_SECS)]
        timeout: u64,
        /// Keep setuid, setgid and sticky bits of files copied from the guest (dropped by
        /// default: the guest's files are not trusted on the host).
        #[arg(long)]
        preserve: bool,
    },
    /// Power a running VM off cleanly.
    Stop {
        /// VM name.
        name: String,
    },
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ElfCmd {
    /// Print the shared libraries (and loader) the binaries need, one resolved path a line.
    Deps {
        /// Binaries.
        #[arg(required = true)]
        binaries: Vec<PathBuf>,
        /// Resolve inside this root instead of /.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum KernelCmd {
    /// Check a kernel's configuration against kernel-config/ for an image: every required
    /// option built in, a module the image carries, or missing. Exits 1 when the image
    /// cannot work with that kernel.
    Check {
        /// A kernel image (its config-VERSION or .config beside it, or IKCONFIG inside), a
        /// config file, or a Debian kernel package name; default: the spec's kernel.
        kernel: Option<String>,
        /// The spec whose image must run (default: the built-in default spec).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Also list the options that are fine.
        #[arg(long)]
        all: bool,
    },
    /// Build a kernel without modules from kernel-config/ fragments (cached); prints the
    /// kernel's path (the bzImage, or arm64's Image).
    Build {
        /// The kernel's architecture: x86_64 or aarch64 (cross-compiled with Debian's
        /// gcc-aarch64-linux-gnu on an x86_64 host). Default: the host's, else x86_64.
        #[arg(long, value_parser = ["x86_64", "aarch64"])]
        arch: Option<String>,
        /// Linux source: an unconfigured source directory, or `debian` for Debian's
        /// linux-source package.
        #[arg(long, default_value = "debian")]
        source: String,
        /// A fragment: a name under kernel-config/ (`base`, `x86_64/arch`) or a path to a
        /// .config file; repeatable. Default: base, hardening and the arch's own.
        #[arg(long = "fragment")]
        fragments: Vec<String>,
        /// Copy the kernel here too.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the closure of kernel modules in load order, one name a line.
    Modules {
        /// Kernel: a `lib/modules/VERSION` directory, or a Debian kernel package name.
        #[arg(long)]
        kernel: String,
        /// Modules whose closure to compute.
        #[arg(long, num_args = 1.., required = true)]
        closure: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SpecCmd {
    /// Print the JSON schema of the spec format.
    Schema,
    /// Validate a spec and print it with defaults applied.
    Check {
        /// Spec file (default: the built-in default spec).
        spec: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MachineArg {
    Auto,
    Standard,
    Microvm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TransportArg {
    Auto,
    VhostKernel,
    VhostUser,
    Serial,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NetArg {
    None,
    User,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NetBackendArg {
    Auto,
    Passt,
    Slirp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ShareBackendArg {
    Auto,
    Virtiofs,
    #[value(name = "9p")]
    NineP,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Initrd,
    Tar,
    Uki,
    Disk,
    Qcow2,
    Iso,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        }
    }
}

/// Parses arguments and runs the command; returns the process exit code.
pub fn run() -> Result<u8> {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match cli.command {
        Cmd::Build {
            spec,
            output,
            compression,
            refresh,
            insecure_registries,
            formats,
            cache_from,
            cache_to,
            arch,
            kernel,
        } => {
            if refresh {
                std::env::set_var("MINKE_REFRESH", "1");
            }
            let mut opts = BuildOptions::new(spec, output);
            opts.registry.refresh = refresh;
            opts.registry.insecure = insecure_registries;
            opts.formats = formats
                .into_iter()
                .map(|f| match f {
                    FormatArg::Initrd => minke::image::Format::Initrd,
                    FormatArg::Tar => minke::image::Format::Tar,
                    FormatArg::Uki => minke::image::Format::Uki,
                    FormatArg::Disk => minke::image::Format::Disk,
                    FormatArg::Qcow2 => minke::image::Format::Qcow2,
                    FormatArg::Iso => minke::image::Format::Iso,
                })
                .collect();
            opts.compression = compression.map(Into::into);
            opts.kernel = kernel.as_deref().map(parse_kernel_arg);
            opts.cache_from = cache_from;
            opts.cache_to = cache_to;
            opts.arch = match arch.as_deref() {
                None => None,
                Some(a) => Some(
                    minke_protocol::arch::Arch::parse(a)
                        .with_context(|| format!("--arch {a}: write x86_64 or aarch64"))?,
                ),
            };
            let progress = Progress::new();
            let img = image::build(&opts, &|m| progress.step(m))?;
            drop(progress);
            for f in image::outputs::files_of(&img) {
                writeln!(out, "{}", f.display())?;
            }
            for f in &img.format_outputs {
                writeln!(out, "{}", f.display())?;
            }
            writeln!(
                out,
                "image {} sha256:{}",
                img.name, img.manifest.image_digest
            )?;
        }
        Cmd::Push {
            image,
            reference,
            insecure_registries,
        } => {
            let img = Image::open(&image)?;
            let registry = crate::run_image::registry(insecure_registries)?;
            let progress = Progress::new();
            let digest =
                image::publish::push(&img, &reference, &registry, minke::epoch_from_env(), &|m| {
                    progress.step(m)
                })?;
            drop(progress);
            writeln!(out, "{reference}@{digest}")?;
        }
        Cmd::Pull {
            reference,
            output,
            insecure_registries,
        } => {
            let registry = crate::run_image::registry(insecure_registries)?;
            let progress = Progress::new();
            let (img, digest) =
                image::publish::pull(&reference, &registry, &output, &|m| progress.step(m))?;
            drop(progress);
            writeln!(out, "{}", img.dir.join(&img.name).display())?;
            writeln!(out, "{digest}")?;
        }
        Cmd::Inspect { image } => {
            let img = Image::open(&image)?;
            let m = &img.manifest;
            writeln!(out, "image   {} ({})", m.name, m.arch)?;
            writeln!(out, "digest  sha256:{}", m.image_digest)?;
            writeln!(
                out,
                "kernel  {} sha256:{} ({})",
                m.kernel.version, m.kernel.sha256, m.kernel.source
            )?;
            writeln!(out, "cmdline {}", m.cmdline)?;
            writeln!(
                out,
                "initrd  {} bytes {:?} sha256:{}",
                m.initrd.size, m.initrd.compression, m.initrd.sha256
            )?;
            for l in &m.layers {
                writeln!(out, "layer   {} sha256:{}", l.name, l.digest)?;
            }
            for (i, md) in m.modules.iter().enumerate() {
                writeln!(out, "module  {:>2} {} {}", i + 1, md.name, md.path)?;
            }
            for f in &m.files {
                let t = format!("{:?}", f.kind).to_lowercase();
                let extra = match (&f.target, &f.sha256) {
                    (Some(t), _) => format!("-> {t}"),
                    (None, Some(s)) => {
                        format!("{} sha256:{}", f.size.unwrap_or(0), &s[..16.min(s.len())])
                    }
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "{t:<8} {:04o} {}:{} {} {extra}",
                    f.mode, f.uid, f.gid, f.path
                )?;
            }
        }
        Cmd::Diff { a, b } => {
            let (a, b) = (Image::open(&a)?, Image::open(&b)?);
            let d = image::diff(&a.manifest, &b.manifest);
            for l in &d {
                writeln!(out, "{l}")?;
            }
            return Ok(if d.is_empty() { 0 } else { 1 });
        }
        Cmd::Elf {
            command: ElfCmd::Deps { binaries, root },
        } => {
            let closure = minke::sources::elf::closure(
                &root,
                &binaries,
                &minke::sources::elf::Options::default(),
            )?;
            for p in closure.paths() {
                writeln!(out, "{}", p.display())?;
            }
        }
        Cmd::Kernel {
            command: KernelCmd::Modules { kernel, closure },
        } => {
            let dir = if Path::new(&kernel).is_dir() {
                PathBuf::from(&kernel)
            } else if kernel.contains('/') {
                bail!("{kernel} is not a directory: give a lib/modules/VERSION directory or a Debian kernel package name");
            } else {
                let cache = minke::layer::Cache::default_location();
                let progress = Progress::new();
                let k = minke::kernel::kernel_from_package(&kernel, &cache, &|m| progress.step(m))?;
                k.modules_dir
                    .context("that kernel package has no modules")?
            };
            let names: Vec<&str> = closure.iter().map(String::as_str).collect();
            for m in minke::kernel::kmod::closure(&dir, &names)? {
                writeln!(out, "{}", m.name)?;
            }
        }
        Cmd::Kernel {
            command: KernelCmd::Check { kernel, spec, all },
        } => {
            let cache = minke::layer::Cache::default_location();
            let progress = Progress::new();
            let report = minke::kernel::check_kernel(
                spec.as_deref(),
                kernel.as_deref(),
                None,
                &cache,
                &|m| progress.step(m),
            )?;
            drop(progress);
            write!(out, "{}", report.render(all))?;
            if report.fatal() {
                return Ok(1);
            }
        }
        Cmd::Kernel {
            command:
                KernelCmd::Build {
                    arch,
                    source,
                    fragments,
                    output,
                },
        } => {
            let cache = minke::layer::Cache::default_location();
            let src = (source != "debian").then(|| PathBuf::from(&source));
            let cwd = std::env::current_dir()?;
            let opts = minke::kernel::kbuild_options(
                src,
                &fragments,
                arch.as_deref().unwrap_or(
                    minke_protocol::arch::Arch::host()
                        .unwrap_or(minke_protocol::arch::Arch::X86_64)
                        .name(),
                ),
                &cwd,
                minke::epoch_from_env(),
            )?;
            let progress = Progress::new();
            let built = minke::kernel::kbuild::build(&opts, &cache, &|m| progress.step(m))?;
            drop(progress);
            if let Some(o) = output {
                let bytes = std::fs::read(&built.image)?;
                minke::layer::write_atomic(&o, &bytes)?;
            }
            writeln!(out, "{}", built.image.display())?;
            if let Some(v) = &built.vmlinux {
                writeln!(out, "{}", v.display())?;
            }
            writeln!(
                out,
                "{} ({})",
                built.release,
                if built.cached { "cached" } else { "built" }
            )?;
        }
        Cmd::Spec {
            command: SpecCmd::Schema,
        } => {
            writeln!(out, "{}", minke::spec::schema_json())?;
        }
        Cmd::Spec {
            command: SpecCmd::Check { spec },
        } => {
            let s = minke::spec::load(spec.as_deref())?;
            writeln!(out, "{}", serde_yaml_ng::to_string(&s.raw)?)?;
        }
        Cmd::Run {
            image,
            firmware,
            mem,
            cpus,
            disks,
            publish,
            env,
            data,
            console,
            timeout,
            name,
            container,
            boot_chart,
            accel,
            transport,
            machine,
            shares,
            share_backend,
            adds,
            net,
            net_backend,
            runner,
            pass_env,
            oci_image,
            platform,
            insecure_registries,
            cmd,
        } => {
            let net = net.map(|n| match n {
                NetArg::None => minke_shim::NetMode::None,
                NetArg::User => minke_shim::NetMode::User,
            });
            let net_backend = match net_backend {
                NetBackendArg::Auto => minke_shim::NetBackend::Auto,
                NetBackendArg::Passt => minke_shim::NetBackend::Passt,
                NetBackendArg::Slirp => minke_shim::NetBackend::Slirp,
            };
            drop(out);
            let share_backend = match share_backend {
                ShareBackendArg::Auto => minke_shim::ShareBackend::Auto,
                ShareBackendArg::Virtiofs => minke_shim::ShareBackend::Virtiofs,
                ShareBackendArg::NineP => minke_shim::ShareBackend::NineP,
            };
            let accel = match accel {
                AccelArg::Auto => minke_shim::Accel::Auto,
                AccelArg::Kvm => minke_shim::Accel::Kvm,
                AccelArg::Tcg => minke_shim::Accel::Tcg,
            };
            let transport = match transport {
                TransportArg::Auto => minke_shim::Transport::Auto,
                TransportArg::VhostKernel => minke_shim::Transport::VhostKernel,
                TransportArg::VhostUser => minke_shim::Transport::VhostUser,
                TransportArg::Serial => minke_shim::Transport::Serial,
            };
            let machine = match machine {
                MachineArg::Auto => minke_shim::Machine::Auto,
                MachineArg::Standard => minke_shim::Machine::Standard,
                MachineArg::Microvm => minke_shim::Machine::Microvm,
            };
            return crate::run::run(crate::run::RunArgs {
                image,
                firmware,
                mem,
                cpus,
                disks,
                publish,
                env,
                data,
                console,
                timeout,
                name,
                container,
                boot_chart,
                accel,
                transport,
                machine,
                shares,
                share_backend,
                adds,
                net,
                net_backend,
                runner,
                pass_env,
                oci_image,
                platform,
                insecure_registries,
                cmd,
            });
        }
        Cmd::Exec {
            name,
            container,
            timeout,
            cmd,
        } => {
            drop(out);
            return crate::run::exec(&name, container, Duration::from_secs(timeout), cmd);
        }
        Cmd::Ps => crate::run::ps(&mut out)?,
        Cmd::Logs {
            name,
            service,
            follow,
            timeout,
        } => crate::run::logs(
            &name,
            service.as_deref(),
            follow,
            Duration::from_secs(timeout),
            &mut out,
        )?,
        Cmd::Cp {
            src,
            dst,
            timeout,
            preserve,
        } => crate::run::cp(&src, &dst, Duration::from_secs(timeout), preserve)?,
        Cmd::Stop { name } => crate::run::stop(&name)?,
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "minke", &mut out);
        }
    }
    Ok(0)
}

/// `--kernel` values: `build`, `build:FRAGMENT,…`, `package:NAME`, or a path.
fn parse_kernel_arg(k: &str) -> minke::spec::RawKernel {
    use minke::spec::{RawKernel, RawKernelBuild};
    if k == "build" {
        RawKernel::Build {
            build: RawKernelBuild::default(),
        }
    } else if let Some(f) = k.strip_prefix("build:") {
        RawKernel::Build {
            build: RawKernelBuild {
                fragments: f.split(',').map(str::to_owned).collect(),
                source: None,
            },
        }
    } else if let Some(p) = k.strip_prefix("package:") {
        RawKernel::Package {
            package: p.to_owned(),
        }
    } else {
        let abs = std::env::current_dir()
            .map(|d| d.join(k))
            .unwrap_or_else(|_| PathBuf::from(k));
        RawKernel::Path {
            path: abs,
            modules: None,
        }
    }
}
