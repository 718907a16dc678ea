//! QEMU and vhost-device-vsock command lines, built from a resolved plan (pure functions, so
//! tests can compare them as text).

use std::path::{Path, PathBuf};

use crate::config::{DiskSpec, EfiMedium, VmConfig};
use crate::net::NetPlan;
use crate::share::{self, Planned};
use crate::state::{files, UsedAccel, UsedMachine, UsedTransport};

/// Guest CID given to vhost-device-vsock: it only matters inside the VM.
pub const VHOST_USER_CID: u32 = 3;

/// Name of the virtio-serial port the guest's serial agent opens.
pub use minke_protocol::mux::PORT_NAME as SERIAL_PORT_NAME;

/// The kernel command line: the configured one, plus `minke.transport=serial` when the guest
/// must use the virtio-serial transport (its agents read it to know), plus, on microvm,
/// `pci=off` (there is no PCI bus to probe; a kernel that looks calls its absence fatal on the
/// console), the word that tells PID1 to load virtio-mmio instead of virtio-pci modules, and
/// the TSC's rate when the guest has nothing to calibrate it against (see
/// [`MachinePlan::tsc_khz`]).
pub(crate) fn kernel_cmdline(
    cfg: &VmConfig,
    transport: UsedTransport,
    machine: UsedMachine,
    tsc_khz: Option<u64>,
) -> String {
    use minke_protocol::mux::{TRANSPORT_PARAM, TRANSPORT_SERIAL};
    let mut ours = String::new();
    if transport == UsedTransport::Serial {
        ours.push_str(&format!(" {TRANSPORT_PARAM}={TRANSPORT_SERIAL}"));
    }
    if machine == UsedMachine::Microvm {
        ours.push_str(&format!(
            " pci=off {}",
            minke_protocol::config::MICROVM_PARAM
        ));
    }
    if let Some(khz) = tsc_khz {
        ours.push_str(&format!(" tsc_early_khz={khz}"));
    }
    // Everything after a lone `--` goes to the init as its arguments: ours go before it.
    match cfg.cmdline.split_once(" -- ") {
        Some((kernel, init)) => format!("{kernel}{ours} -- {init}"),
        None => match cfg.cmdline.strip_suffix(" --") {
            Some(kernel) => format!("{kernel}{ours} --"),
            None => format!("{}{ours}", cfg.cmdline),
        },
    }
}

/// The machine a boot uses, with what its guest must be told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MachinePlan {
    /// The machine.
    pub(crate) used: UsedMachine,
    /// The rate of the host's TSC in kHz, for a microvm guest under TCG: it has no HPET or
    /// ACPI PM timer, and calibrating against the emulated PIT fails on a loaded host.
    pub(crate) tsc_khz: Option<u64>,
}

impl MachinePlan {
    /// A machine whose guest needs to be told nothing.
    pub(crate) fn plain(used: UsedMachine) -> Self {
        MachinePlan {
            used,
            tsc_khz: None,
        }
    }
}

/// How many virtio-mmio transports QEMU's microvm has (with its second IO-APIC, the default).
pub const MICROVM_VIRTIO_SLOTS: usize = 24;

/// QEMU's arguments (without the program name).
pub(crate) fn qemu_args(
    cfg: &VmConfig,
    state: &Path,
    plan: MachinePlan,
    accel: UsedAccel,
    transport: UsedTransport,
    shares: &[Planned],
    net: Option<&NetPlan>,
) -> Vec<String> {
    let machine = plan.used;
    // Under KVM the guest reads the rate from its paravirtual clock.
    let tsc_khz = plan.tsc_khz.filter(|_| accel == UsedAccel::Tcg);
    let p = |f: &str| path_arg(&state.join(f));
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-name",
        &cfg.name,
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ]);
    let aarch64 = machine == UsedMachine::Virt;
    match (accel, aarch64) {
        (UsedAccel::Kvm, _) => push(&["-accel", "kvm", "-cpu", "host"]),
        (UsedAccel::Tcg, false) => push(&["-accel", "tcg"]),
        // Every feature, with QEMU's own pointer authentication (far cheaper to emulate).
        (UsedAccel::Tcg, true) => push(&["-accel", "tcg", "-cpu", "max,pauth-impdef=on"]),
    }
    // vhost-user backends (the vsock backend, virtiofsd) map the guest's memory.
    let shared_mem = transport == UsedTransport::VhostUser || share::needs_shared_memory(shares);
    let machine_arg = if shared_mem {
        format!("{},memory-backend=mem", machine.name())
    } else {
        machine.name().to_string()
    };
    push(&["-machine", &machine_arg]);
    let mem = format!("{}M", cfg.mem_mib);
    push(&["-m", &mem, "-smp", &cfg.cpus.to_string()]);
    if shared_mem {
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]);
    }
    match &cfg.efi {
        None => {
            let kernel = match &cfg.pvh_kernel {
                Some(elf) if machine == UsedMachine::Microvm => elf,
                _ => &cfg.kernel,
            };
            push(&[
                "-kernel",
                &path_arg(kernel),
                "-initrd",
                &path_arg(&cfg.initrd),
            ]);
            push(&["-append", &kernel_cmdline(cfg, transport, machine, tsc_khz)]);
        }
        Some(efi) => {
            push(&["-bios", &path_arg(&efi.firmware)]);
            match &efi.medium {
                EfiMedium::Uki(p) => push(&["-kernel", &path_arg(p)]),
                EfiMedium::Disk { path, format } => {
                    // A throw-away overlay: the release image stays the same bytes.
                    push(&[
                        "-drive",
                        &format!(
                            "file={},if=none,id=boot,format={},snapshot=on",
                            path_arg(path).replace(',', ",,"),
                            format.qemu_name()
                        ),
                    ]);
                    push(&[
                        "-device",
                        &format!("{},drive=boot,bootindex=0", machine.virtio("virtio-blk")),
                    ]);
                }
                EfiMedium::Cdrom(p) => {
                    push(&[
                        "-drive",
                        &format!(
                            "file={},if=none,id=boot,media=cdrom,readonly=on,format=raw",
                            path_arg(p).replace(',', ",,")
                        ),
                    ]);
                    if aarch64 {
                        // `virt` has no IDE: the drive sits on virtio-scsi, which the
                        // firmware boots from.
                        push(&["-device", "virtio-scsi-pci,id=scsi"]);
                        push(&["-device", "scsi-cd,drive=boot,bus=scsi.0,bootindex=0"]);
                    } else {
                        push(&["-device", "ide-cd,drive=boot,bus=ide.0,bootindex=0"]);
                    }
                }
            }
        }
    }
    if transport == UsedTransport::Serial {
        // Also out of band: a medium with its own command line cannot be given the word.
        push(&[
            "-fw_cfg",
            &format!(
                "name={},string={}",
                minke_protocol::mux::TRANSPORT_FW_CFG_NAME,
                minke_protocol::mux::TRANSPORT_SERIAL
            ),
        ]);
    }
    // The secret by file, never by value: QEMU's argv is visible to every local user.
    push(&[
        "-fw_cfg",
        &format!(
            "name={},file={}",
            minke_protocol::auth::FW_CFG_NAME,
            p(files::SECRET).replace(',', ",,")
        ),
    ]);
    let console = if cfg.console_to_terminal {
        format!(
            "stdio,id=con,signal=off,logfile={},logappend=off",
            p(files::CONSOLE)
        )
    } else {
        // The booting shim reads it and writes the capped console.log (crate::console).
        format!("socket,id=con,path={}", p(files::CONSOLE_SOCKET))
    };
    push(&["-chardev", &console, "-serial", "chardev:con"]);
    push(&[
        "-chardev",
        &format!("socket,id=qmp,path={},server=on,wait=off", p(files::QMP)),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    match transport {
        UsedTransport::VhostKernel { cid } => {
            push(&[
                "-device",
                &format!("{},guest-cid={cid}", machine.virtio("vhost-vsock")),
            ]);
        }
        UsedTransport::VhostUser => {
            push(&["-chardev", &format!("socket,id=vhu,path={}", p(files::VHU))]);
            push(&[
                "-device",
                &format!("{},chardev=vhu", machine.virtio("vhost-user-vsock")),
            ]);
        }
        UsedTransport::Serial => {
            push(&[
                "-device",
                &format!("{},id=vser", machine.virtio("virtio-serial")),
            ]);
            let chr = format!("socket,id=ctl,path={},server=on,wait=off", p(files::SERIAL));
            push(&["-chardev", &chr]);
            push(&[
                "-device",
                &format!("virtserialport,chardev=ctl,name={SERIAL_PORT_NAME}"),
            ]);
        }
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        push(&["-drive", &drive_arg(i, d)]);
        push(&[
            "-device",
            &format!(
                "{},drive=d{i},serial={}",
                machine.virtio("virtio-blk"),
                d.label
            ),
        ]);
    }
    if let Some(img) = &cfg.run_image {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=runimg,format=raw,readonly=on",
                path_arg(img).replace(',', ",,")
            ),
        ]);
        push(&[
            "-device",
            &format!(
                "{},drive=runimg,serial={}",
                machine.virtio("virtio-blk"),
                minke_protocol::image::DISK_SERIAL
            ),
        ]);
        push(&[
            "-fw_cfg",
            &format!(
                "name={},file={}",
                minke_protocol::image::FW_CFG_NAME,
                path_arg(&state.join(crate::state::files::IMAGE)).replace(',', ",,")
            ),
        ]);
    }
    a.extend(share::qemu_args(state, machine, shares));
    a.extend(crate::net::qemu_args(state, machine, net));
    a
}

/// A data disk. `cache=writeback` (QEMU's default, spelled out because durability rests on it):
/// a guest flush becomes fdatasync(2) of the image file, so what the guest acknowledged after
/// fsync is on the host's storage too, not only in its page cache.
fn drive_arg(i: usize, d: &DiskSpec) -> String {
    format!(
        "file={},if=none,id=d{i},format={},cache=writeback",
        path_arg(&d.path).replace(',', ",,"),
        d.format.qemu_name()
    )
}

/// vhost-device-vsock's arguments.
pub(crate) fn backend_args(state: &Path) -> Vec<String> {
    vec![
        "--guest-cid".into(),
        VHOST_USER_CID.to_string(),
        "--socket".into(),
        path_arg(&state.join(files::VHU)),
        "--uds-path".into(),
        path_arg(&state.join(files::VSOCK)),
    ]
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The Unix socket on which guest connections to host `port` arrive (hybrid vsock).
pub fn guest_to_host_socket(state: &Path, port: u32) -> PathBuf {
    state.join(format!("{}_{port}", files::VSOCK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiskFormat;

    fn cfg() -> VmConfig {
        let mut c = VmConfig::new("t", "/img/k", "/img/i");
        c.cmdline = "console=ttyS0 quiet panic=-1".into();
        c.disks.push(DiskSpec {
            label: "var".into(),
            path: "/d/var.img".into(),
            size: 1 << 20,
            format: DiskFormat::Raw,
        });
        c
    }

    /// The QEMU line for `c` with no shares and no network card, with state in `/s`.
    fn line(
        c: &VmConfig,
        machine: MachinePlan,
        accel: UsedAccel,
        transport: UsedTransport,
    ) -> String {
        qemu_args(c, Path::new("/s"), machine, accel, transport, &[], None).join(" ")
    }

    fn check(accel: UsedAccel, transport: UsedTransport, expected: &str) {
        let got = line(
            &cfg(),
            MachinePlan::plain(UsedMachine::Q35),
            accel,
            transport,
        );
        assert_eq!(
            got,
            expected.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    const HEAD: &str = "-name t -nodefaults -no-user-config -no-reboot -display none";
    const BOOT: &str = "-kernel /img/k -initrd /img/i -append console=ttyS0 quiet panic=-1 \
        -fw_cfg name=opt/minke/secret,file=/s/secret \
        -chardev socket,id=con,path=/s/console.sock -serial chardev:con \
        -chardev socket,id=qmp,path=/s/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control";
    const DISK: &str = "-drive file=/d/var.img,if=none,id=d0,format=raw,cache=writeback \
        -device virtio-blk-pci,drive=d0,serial=var";

    #[test]
    fn vhost_user_tcg() {
        check(
            UsedAccel::Tcg,
            UsedTransport::VhostUser,
            &format!(
                "{HEAD} -accel tcg -machine q35,memory-backend=mem -m 512M -smp 1 \
                 -object memory-backend-memfd,id=mem,size=512M,share=on {BOOT} \
                 -chardev socket,id=vhu,path=/s/vhu.sock -device vhost-user-vsock-pci,chardev=vhu {DISK}"
            ),
        );
    }

    #[test]
    fn vhost_kernel_kvm() {
        check(
            UsedAccel::Kvm,
            UsedTransport::VhostKernel { cid: 7 },
            &format!(
                "{HEAD} -accel kvm -cpu host -machine q35 -m 512M -smp 1 {BOOT} \
                 -device vhost-vsock-pci,guest-cid=7 {DISK}"
            ),
        );
    }

    #[test]
    fn serial_tcg() {
        let boot = BOOT.replace(
            "panic=-1",
            "panic=-1 minke.transport=serial -fw_cfg name=opt/minke/transport,string=serial",
        );
        check(
            UsedAccel::Tcg,
            UsedTransport::Serial,
            &format!(
                "{HEAD} -accel tcg -machine q35 -m 512M -smp 1 {boot} \
                 -device virtio-serial-pci,id=vser \
                 -chardev socket,id=ctl,path=/s/serial.sock,server=on,wait=off \
                 -device virtserialport,chardev=ctl,name=minke.control {DISK}"
            ),
        );
    }

    #[test]
    fn console_to_terminal_tees_through_stdio() {
        let mut c = cfg();
        c.console_to_terminal = true;
        let a = line(
            &c,
            MachinePlan::plain(UsedMachine::Q35),
            UsedAccel::Tcg,
            UsedTransport::VhostUser,
        );
        assert!(
            a.contains("-chardev stdio,id=con,signal=off,logfile=/s/console.log,logappend=off"),
            "{a}"
        );
    }

    #[test]
    fn efi_boots_hand_qemu_the_firmware_and_the_medium_only() {
        use crate::config::{DiskFormat, EfiBoot};
        let args = |medium: EfiMedium| {
            let mut c = cfg();
            c.efi = Some(EfiBoot {
                firmware: "/fw/OVMF.fd".into(),
                medium,
            });
            line(
                &c,
                MachinePlan::plain(UsedMachine::Q35),
                UsedAccel::Tcg,
                UsedTransport::Serial,
            )
        };
        let a = args(EfiMedium::Uki("/img/t.efi".into()));
        assert!(
            a.contains("-bios /fw/OVMF.fd -kernel /img/t.efi -fw_cfg"),
            "{a}"
        );
        assert!(!a.contains("-initrd") && !a.contains("-append"), "{a}");
        assert!(a.contains("name=opt/minke/transport,string=serial"), "{a}");
        let a = args(EfiMedium::Disk {
            path: "/img/t.qcow2".into(),
            format: DiskFormat::Qcow2,
        });
        assert!(
            a.contains(
                "-drive file=/img/t.qcow2,if=none,id=boot,format=qcow2,snapshot=on \
                 -device virtio-blk-pci,drive=boot,bootindex=0"
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .as_str()
            ),
            "{a}"
        );
        assert!(!a.contains("-kernel"), "{a}");
        let a = args(EfiMedium::Cdrom("/img/t.iso".into()));
        assert!(a.contains("media=cdrom,readonly=on"), "{a}");
        assert!(
            a.contains("-device ide-cd,drive=boot,bus=ide.0,bootindex=0"),
            "{a}"
        );
        // aarch64's `virt` has no IDE: its CD-ROM sits on virtio-scsi.
        let mut c = cfg();
        c.arch = minke_protocol::arch::Arch::Aarch64;
        c.efi = Some(EfiBoot {
            firmware: "/fw/AAVMF_CODE.fd".into(),
            medium: EfiMedium::Cdrom("/img/a.iso".into()),
        });
        let a = line(
            &c,
            MachinePlan::plain(UsedMachine::Virt),
            UsedAccel::Tcg,
            UsedTransport::VhostUser,
        );
        assert!(a.contains("-bios /fw/AAVMF_CODE.fd"), "{a}");
        assert!(
            a.contains(
                "-device virtio-scsi-pci,id=scsi -device scsi-cd,drive=boot,bus=scsi.0,bootindex=0"
            ),
            "{a}"
        );
        assert!(!a.contains("ide"), "{a}");
    }

    #[test]
    fn the_words_for_the_kernel_go_before_the_inits_arguments() {
        let mut c = cfg();
        c.cmdline = "console=ttyS0 rdinit=/bin/sh -- -c \"echo hi\"".into();
        assert_eq!(
            kernel_cmdline(&c, UsedTransport::Serial, UsedMachine::Microvm, Some(7)),
            "console=ttyS0 rdinit=/bin/sh minke.transport=serial pci=off minke.machine=microvm \
             tsc_early_khz=7 -- -c \"echo hi\""
        );
        c.cmdline = "quiet --".into();
        assert_eq!(
            kernel_cmdline(&c, UsedTransport::Serial, UsedMachine::Q35, None),
            "quiet minke.transport=serial --"
        );
    }

    #[test]
    fn the_pvh_kernel_is_booted_on_microvm_only() {
        let mut c = cfg();
        c.pvh_kernel = Some("/cache/pvh/abc".into());
        let microvm = MachinePlan {
            used: UsedMachine::Microvm,
            tsc_khz: None,
        };
        let a = line(&c, microvm, UsedAccel::Kvm, UsedTransport::VhostUser);
        assert!(a.contains("-kernel /cache/pvh/abc -initrd /img/i"), "{a}");
        let q = line(
            &c,
            MachinePlan::plain(UsedMachine::Q35),
            UsedAccel::Kvm,
            UsedTransport::VhostUser,
        );
        assert!(q.contains("-kernel /img/k -initrd /img/i"), "{q}");
    }

    #[test]
    fn microvm_gets_every_virtio_device_on_mmio() {
        let mut c = cfg();
        c.run_image = Some("/img/run.erofs".into());
        let microvm = MachinePlan {
            used: UsedMachine::Microvm,
            tsc_khz: Some(2_445_436),
        };
        let a = line(&c, microvm, UsedAccel::Tcg, UsedTransport::VhostUser);
        assert!(a.contains("-machine microvm,memory-backend=mem"), "{a}");
        assert!(
            a.contains("-device vhost-user-vsock-device,chardev=vhu"),
            "{a}"
        );
        assert!(
            a.contains("-device virtio-blk-device,drive=d0,serial=var"),
            "{a}"
        );
        assert!(a.contains("-device virtio-blk-device,drive=runimg"), "{a}");
        assert!(!a.contains("-pci"), "{a}");
        assert!(
            a.contains("panic=-1 pci=off minke.machine=microvm tsc_early_khz=2445436 -fw_cfg"),
            "{a}"
        );
        let k = line(&c, microvm, UsedAccel::Kvm, UsedTransport::VhostUser);
        assert!(!k.contains("tsc_early_khz"), "{k}");
        let s = line(&c, microvm, UsedAccel::Tcg, UsedTransport::Serial);
        assert!(s.contains("-device virtio-serial-device,id=vser"), "{s}");
        assert!(
            s.contains(
                "minke.transport=serial pci=off minke.machine=microvm tsc_early_khz=2445436"
            ),
            "{s}"
        );
        assert!(s.contains("-machine microvm -m"), "{s}");
    }

    #[test]
    fn aarch64_guests_get_the_virt_machine() {
        let mut c = cfg();
        c.arch = minke_protocol::arch::Arch::Aarch64;
        let a = line(
            &c,
            MachinePlan::plain(UsedMachine::Virt),
            UsedAccel::Tcg,
            UsedTransport::VhostUser,
        );
        assert!(
            a.contains("-accel tcg -cpu max,pauth-impdef=on -machine virt,memory-backend=mem"),
            "{a}"
        );
    }

    #[test]
    fn backend_command_line() {
        assert_eq!(
            backend_args(Path::new("/s")).join(" "),
            "--guest-cid 3 --socket /s/vhu.sock --uds-path /s/vm.vsock"
        );
    }
}
