//! The machine choice: QEMU's `microvm` where the guest can boot there (no PCI bus to scan, no
//! firmware tables to probe, virtio over MMIO), otherwise the architecture's standard machine,
//! or the one the configuration names.

use super::tsc::host_tsc_khz;
use super::VmError;
use crate::config::{Machine, VmConfig};
use crate::net::NetPlan;
use crate::qemu::{MachinePlan, MICROVM_VIRTIO_SLOTS};
use crate::share::Planned;
use crate::state::{UsedAccel, UsedMachine};
use minke_protocol::arch::Arch;

/// The machine this boot uses, under `accel` (TCG too when `kvm_probe`: a KVM that fails
/// falls back to it).
pub(super) fn resolve_machine(
    cfg: &VmConfig,
    shares: &[Planned],
    net: Option<&NetPlan>,
    accel: UsedAccel,
    kvm_probe: bool,
) -> Result<MachinePlan, VmError> {
    let standard = MachinePlan::plain(match cfg.arch {
        Arch::X86_64 => UsedMachine::Q35,
        Arch::Aarch64 => UsedMachine::Virt,
    });
    if cfg.machine == Machine::Standard {
        return Ok(standard);
    }
    let microvm = match microvm_refusal(cfg, shares, net) {
        Some(why) => Err(why),
        None => {
            let tsc_khz = host_tsc_khz();
            if tsc_khz.is_none() && (accel == UsedAccel::Tcg || kvm_probe) {
                Err(
                    "under TCG its guest must be told the host's TSC rate, and this host's \
                     could not be measured"
                        .to_owned(),
                )
            } else {
                Ok(MachinePlan {
                    used: UsedMachine::Microvm,
                    tsc_khz,
                })
            }
        }
    };
    match (cfg.machine, microvm) {
        (_, Ok(plan)) => Ok(plan),
        (Machine::Auto | Machine::Standard, Err(_)) => Ok(standard),
        (Machine::Microvm, Err(why)) => Err(VmError::Config(format!(
            "cannot boot on the microvm machine: {why}; leave the machine to minke \
                 (`--machine auto`) or ask for the standard one"
        ))),
    }
}

/// The plan for a QEMU started again on the machine a boot recorded (the KVM→TCG fallback).
pub(super) fn replan(used: Option<UsedMachine>) -> MachinePlan {
    match used {
        Some(UsedMachine::Microvm) => MachinePlan {
            used: UsedMachine::Microvm,
            tsc_khz: host_tsc_khz(),
        },
        other => MachinePlan::plain(other.unwrap_or(UsedMachine::Q35)),
    }
}

/// Why this boot cannot use microvm, or `None` when it can.
fn microvm_refusal(cfg: &VmConfig, shares: &[Planned], net: Option<&NetPlan>) -> Option<String> {
    if cfg.arch != Arch::X86_64 {
        return Some(format!(
            "microvm is an x86_64 machine, the guest is {}",
            cfg.arch
        ));
    }
    if cfg.efi.is_some() {
        return Some("a UEFI boot needs OVMF, which runs on q35 only".into());
    }
    if !cfg.microvm_kernel {
        return Some(
            "the image's kernel does not boot there (its manifest says so: microvm needs ACPI \
             built into the kernel, and virtio-mmio built in or carried as a module)"
                .into(),
        );
    }
    let devices = 1
        + cfg.disks.len()
        + usize::from(cfg.run_image.is_some())
        + shares.len()
        + usize::from(net.is_some());
    if devices > MICROVM_VIRTIO_SLOTS {
        return Some(format!(
            "{devices} virtio devices, and microvm has {MICROVM_VIRTIO_SLOTS} slots"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiskSpec;

    fn cfg(machine: Machine, microvm_kernel: bool) -> VmConfig {
        let mut c = VmConfig::new("t", "/k", "/i");
        c.machine = machine;
        c.microvm_kernel = microvm_kernel;
        c
    }

    #[test]
    fn auto_takes_microvm_only_where_the_kernel_boots_there() {
        let m = |c: &VmConfig| {
            resolve_machine(c, &[], None, UsedAccel::Kvm, false)
                .unwrap()
                .used
        };
        assert_eq!(m(&cfg(Machine::Auto, true)), UsedMachine::Microvm);
        assert_eq!(m(&cfg(Machine::Auto, false)), UsedMachine::Q35);
        assert_eq!(m(&cfg(Machine::Standard, true)), UsedMachine::Q35);
        let mut a = cfg(Machine::Auto, true);
        a.arch = Arch::Aarch64;
        assert_eq!(m(&a), UsedMachine::Virt);
        let mut many = cfg(Machine::Auto, true);
        for i in 0..MICROVM_VIRTIO_SLOTS {
            many.disks.push(DiskSpec {
                label: format!("d{i}"),
                path: format!("/d{i}").into(),
                size: 1,
                format: crate::config::DiskFormat::Raw,
            });
        }
        assert_eq!(m(&many), UsedMachine::Q35);
    }

    #[test]
    fn microvm_asked_for_and_impossible_is_an_error_that_says_why() {
        let e = resolve_machine(
            &cfg(Machine::Microvm, false),
            &[],
            None,
            UsedAccel::Tcg,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("virtio-mmio"), "{e}");
        let mut efi = cfg(Machine::Microvm, true);
        efi.efi = Some(crate::config::EfiBoot {
            firmware: "/fw".into(),
            medium: crate::config::EfiMedium::Uki("/u.efi".into()),
        });
        let e = resolve_machine(&efi, &[], None, UsedAccel::Tcg, false).unwrap_err();
        assert!(e.to_string().contains("OVMF"), "{e}");
    }
}
