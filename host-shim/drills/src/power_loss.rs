//! The power-loss drill: a writer that fsyncs each record before acknowledging it, power
//! cuts at seeded random moments, and the records each next boot finds.

use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use minke_shim::disk::{self, Fsck};
use minke_shim::{DiskFormat, DiskSpec, ExecRequest, PowerOff, Stdin, Vm, VmConfig, VmError};

use crate::{boot, vm_err, DrillError, GUEST_TIMEOUT, POWEROFF_GRACE};

/// Where the power-loss writer appends its records.
pub const RECORDS_PATH: &str = "/var/records";

/// Filler that makes each record 64 bytes or more, so a cut can land inside one.
const RECORD_PAD: &str = "................................................";

fn record_line(n: u64) -> String {
    format!("record {n} {RECORD_PAD}")
}

/// The writer: truncates the file to its complete records, then appends record after record,
/// fsyncing the file after each and only then printing its number.
fn writer_script(len: usize, next: u64) -> String {
    format!(
        "f={RECORDS_PATH}; truncate -s {len} $f || exit 101; n={next}; \
         while :; do echo \"record $n {RECORD_PAD}\" >> $f || exit 102; \
         sync $f || exit 103; echo $n; n=$((n + 1)); done"
    )
}

/// What a boot found in the records file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Complete, correct records at the start of the file (`record 0` … `record N-1`).
    pub complete: u64,
    /// Their length in bytes.
    pub complete_len: usize,
    /// Bytes after them without a final newline: a record cut short.
    pub partial: bool,
    /// A complete line that is not the record expected there.
    pub bad_line: Option<String>,
}

/// Reads the records file's bytes: complete records must be `record 0`, `record 1`, … in order;
/// an unterminated last line is a record cut short.
pub fn check_records(data: &[u8]) -> Found {
    let mut found = Found {
        complete: 0,
        complete_len: 0,
        partial: false,
        bad_line: None,
    };
    let mut rest = data;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            found.partial = true;
            break;
        };
        let line = &rest[..end];
        if line != record_line(found.complete).as_bytes() {
            let shown: String = String::from_utf8_lossy(line).chars().take(80).collect();
            found.bad_line = Some(format!(
                "line {} is {shown:?}, expected {:?}",
                found.complete + 1,
                record_line(found.complete)
            ));
            break;
        }
        found.complete += 1;
        found.complete_len += end + 1;
        rest = &rest[end + 1..];
    }
    found
}

/// One power cut and what the next boot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerCut {
    /// Records acknowledged to the host before this cut, over all cuts so far: the next boot
    /// must find at least these.
    pub acked_total: u64,
    /// Records acknowledged in the boot that was cut.
    pub acked: u64,
    /// Time from the writer's first acknowledgement to the cut.
    pub cut_after: Duration,
    /// Complete records the next boot found.
    pub found: u64,
    /// The next boot found a record cut short after the complete ones.
    pub partial_tail: bool,
}

/// What [`power_loss`] measured.
#[derive(Debug, Clone)]
pub struct PowerLossReport {
    /// The seed of the cut moments.
    pub seed: u64,
    /// Every cut, in order.
    pub cuts: Vec<PowerCut>,
    /// Acknowledged records not found, wrong lines: empty when every promise held.
    pub violations: Vec<String>,
    /// How the last boot ended.
    pub poweroff: PowerOff,
    /// `e2fsck -fn` on the image after that clean power-off.
    pub fsck: Fsck,
}

/// Sends each number the writer prints to the drill as it arrives.
struct AckSink {
    line: Vec<u8>,
    tx: mpsc::Sender<Ack>,
}

impl Write for AckSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let s = String::from_utf8_lossy(&self.line).into_owned();
            let _ = self.tx.send(s.trim().parse().map_err(|_| s));
            self.line.clear();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Power loss on a data disk, `cycles` times: a guest appends numbered records to
/// [`RECORDS_PATH`] on a fresh raw disk `dir/var.img`, fsyncing each before printing its
/// number; after a random delay (from `seed`) the host SIGKILLs QEMU and the vsock backend;
/// the next boot (on the same disk) checks that every record acknowledged before the cut is
/// there, then writes on. The last boot powers off cleanly and the image is checked with
/// `e2fsck -fn`. `template` gives the image and machine; each boot's state is `dir/bN`.
/// `progress` hears each cut once it was checked.
pub fn power_loss(
    template: &VmConfig,
    dir: &Path,
    cycles: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize, &PowerCut),
) -> Result<PowerLossReport, DrillError> {
    // Seeded, so the cut moments replay from the printed seed.
    let mut rng = fastrand::Rng::with_seed(seed);
    let disk = DiskSpec {
        label: "var".into(),
        path: dir.join("var.img"),
        size: 32 << 20,
        format: DiskFormat::Raw,
    };
    let _ = std::fs::remove_file(&disk.path);
    let boot_no = |n: usize| {
        let mut cfg = template.clone();
        cfg.name = format!("power-{n}");
        cfg.state_dir = Some(dir.join(format!("b{n}")));
        cfg.disks = vec![disk.clone()];
        boot(cfg)
    };
    let mut cuts: Vec<PowerCut> = Vec::new();
    let mut violations = Vec::new();
    let (mut len, mut next) = (0usize, 0u64);
    let mut vm = boot_no(0)?;
    for n in 1..=cycles {
        let delay = Duration::from_millis(rng.u64(..1500));
        let (acks, cut_after) = write_until_cut(&mut vm, len, next, delay)?;
        let mut expect = next;
        for a in &acks {
            match a {
                Ok(k) if *k == expect => expect += 1,
                other => violations.push(format!(
                    "cut {n}: the writer printed {other:?}, expected {expect}"
                )),
            }
        }
        let mut cut = PowerCut {
            acked_total: expect,
            acked: expect - next,
            cut_after,
            found: 0,
            partial_tail: false,
        };
        vm = boot_no(n)?;
        let data = vm.read_file(RECORDS_PATH).map_err(vm_err(
            &vm,
            format!("after cut {n}: reading {RECORDS_PATH}"),
        ))?;
        let found = check_records(&data);
        cut.found = found.complete;
        cut.partial_tail = found.partial;
        if let Some(bad) = &found.bad_line {
            violations.push(format!("after cut {n}: {bad}"));
        }
        if found.complete < cut.acked_total {
            violations.push(format!(
                "after cut {n}: {} records acknowledged, {} found",
                cut.acked_total, found.complete
            ));
        }
        (len, next) = (found.complete_len, found.complete);
        progress(n, &cut);
        cuts.push(cut);
    }
    let poweroff = vm
        .poweroff(POWEROFF_GRACE)
        .map_err(vm_err(&vm, "power off"))?;
    drop(vm);
    let fsck = disk::check(&disk.path)?;
    Ok(PowerLossReport {
        seed,
        cuts,
        violations,
        poweroff,
        fsck,
    })
}

/// A line the writer printed: a record number, or the line itself when it is not one.
type Ack = Result<u64, String>;

/// Runs the writer, waits for its first acknowledgement, waits `delay` more, then cuts the
/// power. Returns every line the writer printed and the time from the first acknowledgement
/// to the cut.
fn write_until_cut(
    vm: &mut Vm,
    len: usize,
    next: u64,
    delay: Duration,
) -> Result<(Vec<Ack>, Duration), DrillError> {
    let (tx, rx) = mpsc::channel();
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), writer_script(len, next)],
        ..Default::default()
    };
    let shared: &Vm = vm;
    let (first, ended, cut_after) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut sink = AckSink {
                line: Vec::new(),
                tx,
            };
            let mut err = Vec::new();
            let r = shared.exec(req, Stdin::Null, &mut sink, &mut err);
            (r, String::from_utf8_lossy(&err).into_owned())
        });
        let first = rx.recv_timeout(GUEST_TIMEOUT);
        let mut cut_after = Duration::ZERO;
        if first.is_ok() {
            let t = Instant::now();
            std::thread::sleep(delay);
            cut_after = t.elapsed();
        }
        // The power cut: QEMU and the vsock backend die at once (the exec then fails).
        shared.power_cut();
        let ended = writer.join().unwrap_or_else(|_| {
            (
                Err(VmError::Io {
                    what: "the writer thread panicked".into(),
                    source: io::Error::other("panic"),
                }),
                String::new(),
            )
        });
        (first, ended, cut_after)
    });
    let console = vm.console_tail();
    vm.kill();
    let first = match first {
        Ok(a) => a,
        Err(_) => {
            let (r, err) = ended;
            return Err(DrillError::Guest {
                what: format!(
                    "the writer acknowledged no record within {GUEST_TIMEOUT:?} (exec: {r:?}, stderr: {})",
                    err.trim()
                ),
                console,
            });
        }
    };
    if let (Ok(code), err) = &ended {
        return Err(DrillError::Guest {
            what: format!(
                "the writer exited with {code} before the power cut: {}",
                err.trim()
            ),
            console,
        });
    }
    let mut acks = vec![first];
    acks.extend(rx.try_iter());
    Ok((acks, cut_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u64) -> String {
        (0..n).map(|i| record_line(i) + "\n").collect()
    }

    #[test]
    fn complete_records_are_counted() {
        let f = check_records(records(3).as_bytes());
        assert_eq!(
            f,
            Found {
                complete: 3,
                complete_len: records(3).len(),
                partial: false,
                bad_line: None
            }
        );
        assert_eq!(check_records(b"").complete, 0);
    }

    #[test]
    fn a_record_cut_short_is_a_partial_tail() {
        let mut d = records(2);
        d.push_str("record 2 ....");
        let f = check_records(d.as_bytes());
        assert_eq!((f.complete, f.partial, f.bad_line), (2, true, None));
        assert_eq!(f.complete_len, records(2).len());
    }

    #[test]
    fn a_wrong_line_stops_the_count() {
        let mut d = records(2);
        d.push_str("record 5 x\n");
        d.push_str(&(record_line(3) + "\n"));
        let f = check_records(d.as_bytes());
        assert_eq!(f.complete, 2);
        assert!(f.bad_line.unwrap().contains("line 3"));
        let f = check_records(b"\0\0\0\n");
        assert_eq!(f.complete, 0);
        assert!(f.bad_line.is_some());
    }

    #[test]
    fn the_writer_acknowledges_only_after_fsync() {
        let s = writer_script(128, 2);
        let (append, sync, ack) = (
            s.find(">> $f").unwrap(),
            s.find("sync $f").unwrap(),
            s.find("echo $n").unwrap(),
        );
        assert!(append < sync && sync < ack, "{s}");
        assert!(
            s.contains("truncate -s 128 $f") && s.contains("n=2;"),
            "{s}"
        );
    }

    #[test]
    fn acks_are_parsed_line_by_line() {
        let (tx, rx) = mpsc::channel();
        let mut sink = AckSink {
            line: Vec::new(),
            tx,
        };
        sink.write_all(b"0\n1").unwrap();
        sink.write_all(b"2\nx\n").unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got, [Ok(0), Ok(12), Err("x".to_string())]);
    }
}
