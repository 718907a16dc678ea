//! The time sync agent: keeps the guest's CLOCK_REALTIME on the host's.
//!
//! It connects to the host (CID 2, or through the serial agent under the serial transport; see
//! [`crate::conn::connect_host`]) on the time port and sends `GuestMsg::Hello` with a fresh
//! nonce and its proof of the VM secret; the first request follows without waiting for
//! `HostMsg::Welcome` (one round trip less before the first sync), and no reply counts
//! before a Welcome whose proof over that nonce verifies: time comes only from the holder of
//! the secret, whoever else listens on the time port. At each poll it sends a burst of
//! [`BURST`] `TimeRequest { seq, t1 }` (one at a time, each waiting for its `TimeReply`),
//! computes offset and delay of each four-timestamp exchange and keeps the sample with the
//! smallest delay.
//!
//! Discipline ([`Discipline`]): the first sample, any offset above [`STEP_THRESHOLD_NS`] and,
//! after a resume or a detected clock jump, any offset above [`RESYNC_STEP_THRESHOLD_NS`]
//! step the clock (adjtimex ADJ_SETOFFSET). Otherwise the clock is slewed by setting its rate
//! (adjtimex `tick` and `freq`): the rate is an estimate of the guest oscillator's error,
//! learnt from how the offset moves between polls, plus a phase term that cancels the current
//! offset over the next poll interval. Under TCG the guest clock runs ~0.45 % slow, far beyond
//! `freq`'s ±500 ppm, so the coarse part goes into `tick` (100 ppm per µs of tick).
//!
//! Polls start every [`MIN_INTERVAL`] and double up to [`MAX_INTERVAL`] while the offset
//! stays under 0.5 ms. A `HostMsg::Resumed` pushed by the host, or a jump between
//! CLOCK_MONOTONIC and CLOCK_REALTIME/CLOCK_BOOTTIME of more than [`JUMP_THRESHOLD_NS`],
//! triggers a poll at once. If the host goes away the agent reconnects with backoff.
//! Readiness is reported after the first successful sync or the first failure. The first sync
//! of a boot takes only [`FIRST_BURST`] exchanges (the guest waits for it before anything
//! runs), and a full burst follows at once to refine it.

use std::io::{self, Read};
use std::time::Duration;

use minke_protocol::auth::SECRET_LEN;
use minke_protocol::console;
use minke_protocol::wire::{write_frame, FrameDecoder, FrameError, PROTOCOL_VERSION};
use minke_protocol::{GuestMsg, HostMsg, Purpose, Secret};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::time::ClockId;

use crate::conn::{self, HostConn};
use crate::sys;

/// Offsets above this are stepped rather than slewed.
pub const STEP_THRESHOLD_NS: i64 = 100_000_000;
/// After a resume or a jump, offsets above this are stepped.
pub const RESYNC_STEP_THRESHOLD_NS: i64 = 10_000_000;
/// A disagreement between clock deltas above this is a jump.
pub const JUMP_THRESHOLD_NS: i64 = 50_000_000;
/// Exchanges per poll.
pub const BURST: usize = 8;
/// Exchanges of the first sync of a boot, before the agent reports ready: the first exchange
/// is the slowest (its code runs for the first time), the second one's delay bounds the step's
/// error to well under a millisecond even under emulation.
pub const FIRST_BURST: usize = 2;
/// Shortest poll interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest poll interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(4);
/// Largest phase correction, in ppm (5 %: 100 ms in 2 s).
pub const MAX_SLEW_PPM: f64 = 50_000.0;
/// Largest total rate correction, in ppm (adjtimex `tick` allows ±10 %).
pub const MAX_RATE_PPM: f64 = 95_000.0;
/// How long to wait for one `TimeReply`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// USER_HZ of the kernel ABI and the matching nominal `tick` in µs.
const USER_HZ: i64 = 100;
const NOMINAL_TICK: i64 = 1_000_000 / USER_HZ;

/// One four-timestamp exchange reduced to offset and round-trip delay (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Host clock minus guest clock.
    pub offset_ns: i64,
    /// Round-trip time without the host's processing time.
    pub delay_ns: i64,
}

fn sat(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// offset = ((t2 − t1) + (t3 − t4)) / 2, delay = (t4 − t1) − (t3 − t2); never overflows, even
/// on absurd host timestamps.
pub fn sample(t1: i64, t2: i64, t3: i64, t4: i64) -> Sample {
    let (t1, t2, t3, t4) = (t1 as i128, t2 as i128, t3 as i128, t4 as i128);
    Sample {
        offset_ns: sat(((t2 - t1) + (t3 - t4)) / 2),
        delay_ns: sat((t4 - t1) - (t3 - t2)),
    }
}

/// The sample with the smallest non-negative delay.
pub fn best(samples: &[Sample]) -> Option<Sample> {
    samples
        .iter()
        .filter(|s| s.delay_ns >= 0)
        .min_by_key(|s| s.delay_ns)
        .copied()
}

/// What to do with the clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Step CLOCK_REALTIME by this many ns, then run at `rate_ppm`.
    Step {
        /// Amount to add.
        offset_ns: i64,
    },
    /// Keep the time, run at `rate_ppm`.
    Slew,
}

/// A discipline decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Step or slew.
    pub action: Action,
    /// Rate correction to set, in ppm (positive speeds the clock up).
    pub rate_ppm: f64,
    /// When to poll next.
    pub next_poll: Duration,
}

/// The clock discipline: a frequency-locked loop with a per-interval phase correction.
#[derive(Debug, Clone)]
pub struct Discipline {
    /// Estimated rate correction that makes the guest clock run at the host's rate.
    freq_ppm: f64,
    /// How many frequency observations went into `freq_ppm`.
    freq_samples: u32,
    /// Rate correction currently applied.
    applied_ppm: f64,
    /// Monotonic time and remaining offset after the last decision.
    last: Option<(i64, i64)>,
    interval: Duration,
    calm: u32,
}

impl Default for Discipline {
    fn default() -> Self {
        Self::new()
    }
}

impl Discipline {
    /// A discipline that has seen no sample.
    pub fn new() -> Self {
        Discipline {
            freq_ppm: 0.0,
            freq_samples: 0,
            applied_ppm: 0.0,
            last: None,
            interval: MIN_INTERVAL,
            calm: 0,
        }
    }

    /// Estimated frequency correction (ppm).
    pub fn freq_ppm(&self) -> f64 {
        self.freq_ppm
    }

    /// Decides what to do with a new `offset_ns` measured at monotonic time `mono_ns`.
    /// `resync` marks a poll caused by a resume or a jump (lower step threshold; the interval
    /// before it says nothing about the frequency).
    pub fn update(&mut self, mono_ns: i64, offset_ns: i64, resync: bool) -> Decision {
        let step_threshold = if resync {
            RESYNC_STEP_THRESHOLD_NS
        } else {
            STEP_THRESHOLD_NS
        };
        if self.last.is_none() || offset_ns.unsigned_abs() > step_threshold as u64 {
            self.last = Some((mono_ns, 0));
            self.applied_ppm = self.freq_ppm;
            self.interval = MIN_INTERVAL;
            self.calm = 0;
            return Decision {
                action: Action::Step { offset_ns },
                rate_ppm: self.applied_ppm,
                next_poll: self.interval,
            };
        }
        if let Some((t0, o0)) = self.last {
            let dt = mono_ns - t0;
            if !resync && dt >= 200_000_000 {
                let observed = self.applied_ppm + (offset_ns - o0) as f64 * 1e6 / dt as f64;
                let gain = match self.freq_samples {
                    0 => 1.0,
                    1..=3 => 0.5,
                    _ => 0.3,
                };
                self.freq_ppm = (self.freq_ppm + gain * (observed - self.freq_ppm))
                    .clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
                self.freq_samples = self.freq_samples.saturating_add(1);
            }
        }
        let abs = offset_ns.unsigned_abs();
        if abs <= 500_000 {
            self.calm += 1;
            if self.calm >= 3 {
                self.interval = (self.interval * 2).min(MAX_INTERVAL);
                self.calm = 0;
            }
        } else if abs > 1_000_000 || resync {
            self.interval = MIN_INTERVAL;
            self.calm = 0;
        }
        let phase = (offset_ns as f64 * 1e6 / self.interval.as_nanos() as f64)
            .clamp(-MAX_SLEW_PPM, MAX_SLEW_PPM);
        self.applied_ppm = (self.freq_ppm + phase).clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
        self.last = Some((mono_ns, offset_ns));
        Decision {
            action: Action::Slew,
            rate_ppm: self.applied_ppm,
            next_poll: self.interval,
        }
    }
}

/// Splits a rate correction (ppm) into adjtimex `tick` (µs per tick) and `freq` (ppm · 2^16).
pub fn rate_to_timex(rate_ppm: f64) -> (i64, i64) {
    let rate = rate_ppm.clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
    // One µs of tick is 1e6 / NOMINAL_TICK ppm (100 ppm at USER_HZ 100).
    let ppm_per_tick = 1e6 / NOMINAL_TICK as f64;
    let dtick = (rate / ppm_per_tick).round();
    let rest = rate - dtick * ppm_per_tick;
    let freq = (rest * 65536.0)
        .round()
        .clamp(-500.0 * 65536.0, 500.0 * 65536.0);
    (NOMINAL_TICK + dtick as i64, freq as i64)
}

fn now(id: ClockId) -> i64 {
    let t = rustix::time::clock_gettime(id);
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

/// Watches for clock jumps: CLOCK_REALTIME or CLOCK_BOOTTIME moving differently from
/// CLOCK_MONOTONIC (all three are slewed alike, so only steps and suspends separate them).
struct JumpWatch {
    mono: i64,
    real: i64,
    boot: i64,
}

impl JumpWatch {
    fn new() -> Self {
        JumpWatch {
            mono: now(ClockId::Monotonic),
            real: now(ClockId::Realtime),
            boot: now(ClockId::Boottime),
        }
    }

    /// Returns the jump seen since the last call (ns), if any.
    fn check(&mut self) -> Option<i64> {
        let next = JumpWatch::new();
        let dm = next.mono - self.mono;
        let jr = (next.real - self.real) - dm;
        let jb = (next.boot - self.boot) - dm;
        *self = next;
        [jr, jb].into_iter().find(|j| j.abs() > JUMP_THRESHOLD_NS)
    }
}

/// Why a session with the host ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Connecting failed.
    #[error(
        "cannot connect to the host's time service (port {port} over {})",
        conn::transport_name()
    )]
    Connect {
        /// The port.
        port: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The stream failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The host refused or said something unexpected.
    #[error("host time service: {0}")]
    Protocol(String),
    /// The host stopped answering.
    #[error("host time service did not answer within {0:?}")]
    Timeout(Duration),
    /// Setting the clock failed.
    #[error("cannot adjust the clock: {0}")]
    Clock(io::Error),
    /// No random bytes for a nonce.
    #[error("cannot make a nonce: {0}")]
    Random(io::Error),
}

/// The host connection with its frame decoder; pushes (`Resumed`) are noted as they arrive.
struct Session {
    conn: HostConn,
    dec: FrameDecoder,
    seq: u64,
    resumed: bool,
    /// The host's `Welcome` arrived and proved the secret over `nonce`.
    welcomed: bool,
    /// The VM secret both sides prove.
    secret: &'static Secret,
    /// This connection's nonce, sent in `Hello`.
    nonce: [u8; SECRET_LEN],
}

impl Session {
    /// Waits up to `timeout` for the next host message.
    fn next_msg(&mut self, timeout: Duration) -> Result<Option<HostMsg>, SyncError> {
        if let Some(m) = self.dec.next_msg::<HostMsg>()? {
            return Ok(Some(m));
        }
        let deadline = now(ClockId::Monotonic) + timeout.as_nanos() as i64;
        loop {
            let left = deadline - now(ClockId::Monotonic);
            if left <= 0 {
                return Ok(None);
            }
            let ts = rustix::time::Timespec {
                tv_sec: left / 1_000_000_000,
                tv_nsec: left % 1_000_000_000,
            };
            let mut fds = [PollFd::new(&self.conn, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(FrameError::Io(e.into()).into()),
            }
            let mut buf = [0u8; 4096];
            let n = match self.conn.read(&mut buf) {
                Ok(0) => return Err(FrameError::Closed.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FrameError::Io(e).into()),
            };
            self.dec.push(&buf[..n]);
            if let Some(m) = self.dec.next_msg::<HostMsg>()? {
                return Ok(Some(m));
            }
        }
    }

    /// Handles a message that is not the awaited reply.
    fn side_msg(&mut self, m: HostMsg) -> Result<(), SyncError> {
        match m {
            HostMsg::Resumed => {
                self.resumed = true;
                Ok(())
            }
            HostMsg::Error(e) => Err(SyncError::Protocol(e)),
            HostMsg::Welcome { version, proof }
                if !self.welcomed && version == PROTOCOL_VERSION =>
            {
                if !self.secret.verify(Purpose::TimeHost, &self.nonce, &proof) {
                    return Err(SyncError::Protocol(
                        "the time server does not prove the VM's secret: its time is not taken"
                            .into(),
                    ));
                }
                self.welcomed = true;
                Ok(())
            }
            HostMsg::Welcome { version, .. } if !self.welcomed => Err(SyncError::Protocol(
                format!("protocol version mismatch: guest {PROTOCOL_VERSION}, host {version}"),
            )),
            HostMsg::TimeReply { .. } if self.welcomed => Ok(()), // late reply to an abandoned request
            other => Err(SyncError::Protocol(format!(
                "unexpected {} on the time connection",
                crate::control::msg_name(&other)
            ))),
        }
    }

    /// Sends `Hello`; the host's `Welcome` is taken in by the first exchange.
    fn hello(&mut self) -> Result<(), SyncError> {
        write_frame(
            &mut self.conn,
            &GuestMsg::Hello {
                version: PROTOCOL_VERSION,
                client: "timesync".into(),
                nonce: self.nonce,
                proof: self.secret.proof(Purpose::TimeGuest, &self.nonce),
            },
        )?;
        Ok(())
    }

    /// One exchange; `None` when the reply did not come in time.
    fn exchange(&mut self) -> Result<Option<Sample>, SyncError> {
        self.seq += 1;
        let seq = self.seq;
        let t1 = now(ClockId::Realtime);
        write_frame(&mut self.conn, &GuestMsg::TimeRequest { seq, t1 })?;
        let deadline = now(ClockId::Monotonic) + REPLY_TIMEOUT.as_nanos() as i64;
        loop {
            let left = deadline - now(ClockId::Monotonic);
            if left <= 0 {
                return Ok(None);
            }
            match self.next_msg(Duration::from_nanos(left as u64))? {
                None => return Ok(None),
                Some(HostMsg::TimeReply {
                    seq: s,
                    t1: r1,
                    t2,
                    t3,
                }) if s == seq && r1 == t1 && self.welcomed => {
                    let t4 = now(ClockId::Realtime);
                    return Ok(Some(sample(t1, t2, t3, t4)));
                }
                Some(other) => self.side_msg(other)?,
            }
        }
    }

    fn burst(&mut self, exchanges: usize) -> Result<Sample, SyncError> {
        let mut samples = Vec::with_capacity(exchanges);
        for _ in 0..exchanges {
            if let Some(s) = self.exchange()? {
                samples.push(s);
            }
        }
        match best(&samples) {
            Some(b) => Ok(b),
            None if !self.welcomed => Err(SyncError::Protocol(
                "no Welcome from the host in answer to Hello".into(),
            )),
            None => Err(SyncError::Timeout(REPLY_TIMEOUT)),
        }
    }
}

fn apply(d: &Decision) -> Result<(), SyncError> {
    if let Action::Step { offset_ns } = d.action {
        sys::step_clock(offset_ns).map_err(SyncError::Clock)?;
    }
    let (tick, freq) = rate_to_timex(d.rate_ppm);
    sys::set_rate(tick, freq).map_err(SyncError::Clock)
}

fn fmt_ms(ns: i64) -> String {
    format!("{:+.3} ms", ns as f64 / 1e6)
}

/// One connection's life: Hello, then polls until the stream fails.
fn session(
    port: u32,
    disc: &mut Discipline,
    ready: &mut bool,
    backoff: &mut Duration,
) -> Result<(), SyncError> {
    let secret = crate::auth::secret().map_err(|e| SyncError::Protocol(e.to_owned()))?;
    let nonce = crate::auth::nonce().map_err(SyncError::Random)?;
    let conn = conn::connect_host(port).map_err(|source| SyncError::Connect { port, source })?;
    let mut s = Session {
        conn,
        dec: FrameDecoder::default(),
        seq: 0,
        resumed: false,
        welcomed: false,
        secret,
        nonce,
    };
    s.hello()?;
    let mut synced_once = false;
    let mut jumps = JumpWatch::new();
    let mut resync = false;
    let mut next_poll = now(ClockId::Monotonic);
    loop {
        let wait = (next_poll - now(ClockId::Monotonic)).clamp(0, 1_000_000_000);
        if !resync && !s.resumed && wait > 0 {
            if let Some(m) = s.next_msg(Duration::from_nanos(wait as u64))? {
                s.side_msg(m)?;
            }
        }
        if let Some(j) = jumps.check() {
            eprintln!(
                "minke agent timesync: clock jump of {} seen, resyncing",
                fmt_ms(j)
            );
            resync = true;
        }
        if s.resumed {
            eprintln!("{}", console::RESUME_RESYNC);
            s.resumed = false;
            resync = true;
        }
        if !resync && now(ClockId::Monotonic) < next_poll {
            continue;
        }
        let first = !*ready;
        let best = s.burst(if first { FIRST_BURST } else { BURST })?;
        let d = disc.update(now(ClockId::Monotonic), best.offset_ns, resync);
        apply(&d)?;
        if first {
            crate::notify_ready("timesync");
            *ready = true;
        }
        if !synced_once {
            synced_once = true;
            *backoff = Duration::from_millis(200);
            eprintln!(
                "minke agent timesync: connected to the host on port {port} over {}",
                conn::transport_name()
            );
        }
        jumps = JumpWatch::new();
        match d.action {
            Action::Step { offset_ns } => eprintln!(
                "{}",
                console::step_line(offset_ns, best.delay_ns, d.rate_ppm)
            ),
            Action::Slew => eprintln!(
                "{}",
                console::slew_line(
                    best.offset_ns,
                    best.delay_ns,
                    d.rate_ppm,
                    disc.freq_ppm(),
                    d.next_poll.as_secs()
                )
            ),
        }
        resync = false;
        // The quick first sync is refined by a full burst at once.
        next_poll = if first {
            now(ClockId::Monotonic)
        } else {
            now(ClockId::Monotonic) + d.next_poll.as_nanos() as i64
        };
    }
}

/// Runs the time sync agent against the host's `port`; never returns in normal operation.
pub fn run(port: u32) -> i32 {
    let mut disc = Discipline::new();
    let mut ready = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        if let Err(e) = session(port, &mut disc, &mut ready, &mut backoff) {
            eprintln!(
                "minke agent timesync: {}; retrying in {} ms",
                minke_protocol::error_chain(&e),
                backoff.as_millis()
            );
            if matches!(e, SyncError::Clock(_)) && !rustix::process::geteuid().is_root() {
                eprintln!("minke agent timesync: setting the clock needs root (CAP_SYS_TIME)");
            }
            if !ready {
                crate::notify_ready("timesync");
                ready = true;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minke_protocol::wire::read_frame;
    use std::os::unix::net::UnixStream;

    /// A session on one end of a socket pair; the other end plays the host.
    fn session_pair() -> (Session, UnixStream, &'static Secret) {
        let secret: &'static Secret =
            Box::leak(Box::new(Secret::from_bytes(&[0x33; SECRET_LEN]).unwrap()));
        let (g, h) = UnixStream::pair().unwrap();
        let s = Session {
            conn: HostConn::Unix(g),
            dec: FrameDecoder::default(),
            seq: 0,
            resumed: false,
            welcomed: false,
            secret,
            nonce: crate::auth::nonce().unwrap(),
        };
        (s, h, secret)
    }

    /// The host end: reads the Hello and the request, answers with `welcome_proof` (computed
    /// from the Hello's nonce by `prove`) and a reply 5 s ahead of the guest.
    fn fake_host(mut h: UnixStream, prove: impl Fn(&[u8; SECRET_LEN]) -> [u8; SECRET_LEN]) {
        let nonce = match read_frame::<_, GuestMsg>(&mut h).unwrap() {
            GuestMsg::Hello { nonce, .. } => nonce,
            m => panic!("{m:?}"),
        };
        let (seq, t1) = match read_frame::<_, GuestMsg>(&mut h).unwrap() {
            GuestMsg::TimeRequest { seq, t1 } => (seq, t1),
            m => panic!("{m:?}"),
        };
        write_frame(
            &mut h,
            &HostMsg::Welcome {
                version: PROTOCOL_VERSION,
                proof: prove(&nonce),
            },
        )
        .unwrap();
        let t = t1 + 5_000_000_000;
        let _ = write_frame(
            &mut h,
            &HostMsg::TimeReply {
                seq,
                t1,
                t2: t,
                t3: t,
            },
        );
    }

    /// Time is taken only from a server that proves the secret over this connection's nonce;
    /// a Hello carries the guest's own proof over it.
    #[test]
    fn time_only_from_the_holder_of_the_secret() {
        let (mut s, h, secret) = session_pair();
        let host = std::thread::spawn(move || fake_host(h, |_| [0; SECRET_LEN]));
        s.hello().unwrap();
        let e = s.exchange().unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
        host.join().unwrap();

        // A proof over another nonce (a replayed Welcome) is refused too.
        let (mut s, h, _) = session_pair();
        let host = std::thread::spawn(move || {
            fake_host(h, |_| secret.proof(Purpose::TimeHost, &[0; SECRET_LEN]))
        });
        s.hello().unwrap();
        assert!(s.exchange().is_err());
        host.join().unwrap();

        let (mut s, h, secret) = session_pair();
        let nonce = s.nonce;
        let host = std::thread::spawn(move || {
            fake_host(h, |n| {
                assert_eq!(*n, nonce, "the Hello carries the session's nonce");
                secret.proof(Purpose::TimeHost, n)
            })
        });
        s.hello().unwrap();
        let sample = s.exchange().unwrap().expect("a sample from the holder");
        assert!(sample.offset_ns > 4_000_000_000, "{sample:?}");
        assert!(s.welcomed);
        host.join().unwrap();
    }

    #[test]
    fn offset_and_delay() {
        // Host 5 ms ahead, 1 ms each way, 0.2 ms of host processing.
        let s = sample(1_000_000_000, 1_006_000_000, 1_006_200_000, 1_002_200_000);
        assert_eq!(
            s,
            Sample {
                offset_ns: 5_000_000,
                delay_ns: 2_000_000
            }
        );
        // Hostile timestamps neither panic nor wrap.
        let s = sample(i64::MIN, i64::MAX, i64::MAX, i64::MIN);
        assert_eq!(s.offset_ns, i64::MAX);
        let _ = sample(i64::MAX, i64::MIN, i64::MAX, i64::MIN);
    }

    #[test]
    fn best_is_min_delay() {
        let v = [
            Sample {
                offset_ns: 10,
                delay_ns: 500,
            },
            Sample {
                offset_ns: 20,
                delay_ns: 300,
            },
            Sample {
                offset_ns: 30,
                delay_ns: -5,
            },
            Sample {
                offset_ns: 40,
                delay_ns: 900,
            },
        ];
        assert_eq!(best(&v).unwrap().offset_ns, 20);
        assert_eq!(best(&[]), None);
    }

    #[test]
    fn step_or_slew() {
        let mut d = Discipline::new();
        // First sample: always a step, whatever its size.
        assert_eq!(
            d.update(0, 2_000, false).action,
            Action::Step { offset_ns: 2_000 }
        );
        // Small offsets slew, large ones step.
        assert_eq!(
            d.update(1_000_000_000, 3_000_000, false).action,
            Action::Slew
        );
        assert_eq!(
            d.update(2_000_000_000, 99_000_000, false).action,
            Action::Slew
        );
        assert_eq!(
            d.update(3_000_000_000, 101_000_000, false).action,
            Action::Step {
                offset_ns: 101_000_000
            }
        );
        assert_eq!(
            d.update(4_000_000_000, -150_000_000, false).action,
            Action::Step {
                offset_ns: -150_000_000
            }
        );
        // After a resume, 20 ms is stepped.
        assert_eq!(
            d.update(5_000_000_000, 20_000_000, true).action,
            Action::Step {
                offset_ns: 20_000_000
            }
        );
        assert_eq!(
            d.update(6_000_000_000, 2_000_000, true).action,
            Action::Slew
        );
    }

    #[test]
    fn rate_split_into_tick_and_freq() {
        assert_eq!(rate_to_timex(0.0), (10_000, 0));
        assert_eq!(rate_to_timex(4_512.5), (10_045, (12.5 * 65536.0) as i64));
        assert_eq!(rate_to_timex(-130.0), (9_999, -30 * 65536));
        let (tick, freq) = rate_to_timex(1e9);
        assert!((9_000..=11_000).contains(&tick));
        assert!(freq.abs() <= 500 << 16);
    }

    /// A simulated guest clock running 4500 ppm slow with 50 µs of measurement noise: the
    /// loop must hold |offset| ≤ 1 ms once settled, with polls growing to the maximum.
    #[test]
    fn discipline_holds_a_tcg_like_drift() {
        let true_freq = 4_500.0; // the guest needs +4500 ppm
        let mut d = Discipline::new();
        let mut offset: f64 = 1.1e9; // 1.1 s behind after boot
        let mut t: i64 = 0;
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut noise = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng % 100_001) as f64 - 50_000.0) * 1.0 // ±50 µs uniform
        };
        let mut worst_late = 0.0f64;
        let mut rate = 0.0;
        for i in 0..200 {
            let measured = (offset + noise()) as i64;
            let dec = d.update(t, measured, false);
            if let Action::Step { offset_ns } = dec.action {
                offset -= offset_ns as f64;
            }
            rate = dec.rate_ppm;
            let dt = dec.next_poll.as_nanos() as i64;
            // Offset moves by (needed - applied) over dt; check its worst value on the way.
            for k in 1..=10 {
                let o = offset + (true_freq - rate) * 1e-6 * (dt as f64 * k as f64 / 10.0);
                if i >= 15 {
                    worst_late = worst_late.max(o.abs());
                }
            }
            offset += (true_freq - rate) * 1e-6 * dt as f64;
            t += dt;
        }
        assert!(worst_late <= 1_000_000.0, "worst offset {worst_late} ns");
        assert!(
            (d.freq_ppm() - true_freq).abs() < 100.0,
            "freq {}",
            d.freq_ppm()
        );
        assert_eq!(d.interval, MAX_INTERVAL);
        let _ = rate;
    }

    /// After a pause the host pushes `Resumed`; the offset (the pause, lost whole) is stepped
    /// at once and the learnt frequency is kept.
    #[test]
    fn resume_steps_and_keeps_frequency() {
        let mut d = Discipline::new();
        let mut t = 0;
        d.update(t, 1_000_000_000, false);
        for _ in 0..20 {
            t += 1_000_000_000;
            d.update(t, 0, false);
        }
        let f = d.freq_ppm();
        let dec = d.update(t + 1_000_000_000, 5_000_000_000, true);
        assert_eq!(
            dec.action,
            Action::Step {
                offset_ns: 5_000_000_000
            }
        );
        assert_eq!(dec.next_poll, MIN_INTERVAL);
        assert_eq!(d.freq_ppm(), f);
    }
}
