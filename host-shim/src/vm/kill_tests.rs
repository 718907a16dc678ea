//! An attached handle signals nothing its `run.json` cannot prove is the VM's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use minke_protocol::Secret;

use super::{Vm, VmError};
use crate::process::ProcStamp;
use crate::state::{self, RunInfo, StateError};
use crate::state::{files, UsedAccel, UsedTransport};
use crate::transport::Connector;

fn attached(dir: &Path, run: RunInfo) -> Vm {
    Vm {
        name: run.name.clone(),
        state: dir.to_path_buf(),
        connector: Connector::Hybrid {
            uds: dir.join(files::VSOCK),
        },
        accel: run.accel,
        transport: run.transport,
        run,
        owned: None,
        secret: secret(),
    }
}

fn secret() -> Secret {
    Secret::from_bytes(&[7; minke_protocol::auth::SECRET_LEN]).unwrap()
}

fn run(qemu: u32, qemu_stamp: Option<ProcStamp>, backend: Option<u32>) -> RunInfo {
    RunInfo {
        name: "forged".into(),
        qemu_pid: qemu,
        backend_pid: backend,
        qemu_stamp,
        backend_stamp: None,
        shim_pid: 1,
        accel: UsedAccel::Tcg,
        machine: None,
        transport: UsedTransport::VhostUser,
        publish: vec![],
        shares: vec![],
        net: None,
        started_unix: 0,
    }
}

#[test]
fn a_forged_run_json_gets_no_process_signalled() {
    let d = tempfile::tempdir().unwrap();
    // Attaching refuses a state directory others can reach.
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(matches!(
        Vm::attach_dir(d.path()),
        Err(VmError::State(StateError::NotPrivate { .. }))
    ));
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    state::write_private(&d.path().join(files::SECRET), secret().as_bytes()).unwrap();
    let mut sleep = Command::new("sleep").arg("1000").spawn().unwrap();
    let real = ProcStamp::of(sleep.id()).unwrap();
    let wrong = ProcStamp {
        start_ticks: real.start_ticks + 1,
        exe: real.exe.clone(),
    };
    let me = std::process::id();
    let cases = [
        run(sleep.id(), None, None),
        run(sleep.id(), Some(wrong.clone()), None),
        run(me, Some(wrong.clone()), Some(sleep.id())),
        run(4294967295, Some(wrong.clone()), Some(4294967295)),
        run(1, ProcStamp::of(1), Some(1)),
        run(0, Some(wrong.clone()), Some(0)),
    ];
    for r in cases {
        state::write_run(d.path(), &r).unwrap();
        // Through the front door: the record does not prove a running VM.
        let attached_err = Vm::attach_dir(d.path()).map(|_| ());
        assert!(
            matches!(attached_err, Err(VmError::State(StateError::NotRunning(_)))),
            "{r:?}: {attached_err:?}"
        );
        // A handle made from it anyway refuses, and says so.
        let mut vm = attached(d.path(), r.clone());
        assert!(!vm.is_running());
        let e = vm.try_kill().unwrap_err();
        assert!(
            matches!(e, VmError::State(StateError::Unproven { .. })),
            "{r:?}: {e}"
        );
        assert!(e.to_string().contains("did not signal"), "{e}");
        vm.kill();
        assert!(matches!(
            vm.wait_exit(Duration::from_millis(1)),
            Err(VmError::State(StateError::Unproven { .. }))
        ));
        drop(vm);
        assert!(
            sleep.try_wait().unwrap().is_none(),
            "{r:?} signalled the sleep"
        );
    }
    // A record whose QEMU is not proven gets its backend left alone too, even when the
    // backend's own record would prove it.
    let mut r = run(1, ProcStamp::of(1), Some(sleep.id()));
    r.backend_stamp = Some(real.clone());
    attached(d.path(), r).try_kill().unwrap_err();
    assert!(
        sleep.try_wait().unwrap().is_none(),
        "a backend was signalled for an unproven QEMU"
    );
    // A record whose QEMU has exited and whose backend is proven reaches the backend.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_stamp = ProcStamp::of(gone.id());
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let mut r = run(gone_pid, gone_stamp, Some(sleep.id()));
    r.backend_stamp = Some(real);
    attached(d.path(), r).try_kill().unwrap();
    let status = sleep.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}
