//! The console lines the host reads. PID1 and the agents write them for people, but the shim,
//! the tests, the drills and the benchmarks find them in the console log (or a service log)
//! and parse them, so their wording is a contract: each line is written with a constant or a
//! formatter from here and read with the constant or the parser next to it, nowhere else.
//!
//! PID1's lines go out through its log, which puts `minke-init: ` in front of them; its
//! markers and the agents' lines are printed as they are. An agent's output reaches the
//! console behind its service name (`timesync: minke agent timesync: …`), so the parsers look
//! for their line anywhere in a console line. The ready line is
//! [`Secret::ready_line`](crate::Secret::ready_line), after [`READY_MARKER`](crate::READY_MARKER).
//!
//! The parsers never panic: for any text they return the line's data, or `None`.

use std::fmt;

/// PID1's marker right before it powers the machine off (data disks synced and unmounted).
pub const POWERING_OFF: &str = "minke: powering off";

/// PID1's marker right before it reboots the machine (data disks synced and unmounted).
pub const REBOOTING: &str = "minke: rebooting";

/// How a supervised process ended, in the words of PID1's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
}

const EXITED: &str = "exited with status ";
const KILLED: &str = "killed by signal ";
const RESTARTING: &str = "; restarting in ";

impl fmt::Display for Ended {
    /// `exited with status N` or `killed by signal N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "{EXITED}{c}"),
            Ended::Signal(s) => write!(f, "{KILLED}{s}"),
        }
    }
}

/// PID1's line (behind its `minke-init: `) when the service `name` ended and is to be started
/// again in `delay_ms`: `NAME exited with status 1; restarting in 100 ms`.
pub fn restart_line(name: &str, ended: Ended, delay_ms: u64) -> String {
    format!("{name} {ended}{RESTARTING}{delay_ms} ms")
}

/// A [`restart_line`] read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart<'a> {
    /// The service's name.
    pub name: &'a str,
    /// How it ended.
    pub ended: Ended,
    /// When PID1 starts it again, in ms from its end.
    pub delay_ms: u64,
}

/// The [`restart_line`] in the console line `line` (whatever precedes it there), or `None`.
/// Service names have no whitespace (PID1 refuses such names), so the name is the word before
/// how the service ended.
pub fn parse_restart(line: &str) -> Option<Restart<'_>> {
    let (head, delay) = line.trim_end().rsplit_once(RESTARTING)?;
    let delay_ms = delay.strip_suffix(" ms")?.parse().ok()?;
    let ended_as = |sep: &str, ended: fn(i32) -> Ended| {
        let (before, n) = head.rsplit_once(sep)?;
        Some((before.strip_suffix(' ')?, ended(n.parse().ok()?)))
    };
    let (before, ended) =
        ended_as(EXITED, Ended::Code).or_else(|| ended_as(KILLED, Ended::Signal))?;
    let name = before.rsplit(char::is_whitespace).next()?;
    if name.is_empty() {
        return None;
    }
    Some(Restart {
        name,
        ended,
        delay_ms,
    })
}

/// The time sync agent's line when the host reported that the VM was resumed: the agent
/// measures and corrects the clock at once.
pub const RESUME_RESYNC: &str = "minke agent timesync: host reports a resume, resyncing";

const STEP: &str = "minke agent timesync: step ";
const SLEW: &str = "minke agent timesync: slew offset ";

/// `ns` in ms, signed, to the µs: `+5001.610 ms`.
fn ms(ns: i64) -> String {
    format!("{:+.3} ms", ns as f64 / 1e6)
}

/// The time sync agent's line when it steps the clock by `offset_ns`, measured over a round
/// trip of `delay_ns`, and then runs it at `rate_ppm`.
pub fn step_line(offset_ns: i64, delay_ns: i64, rate_ppm: f64) -> String {
    format!(
        "{STEP}{} (delay {}), rate {rate_ppm:+.1} ppm",
        ms(offset_ns),
        ms(delay_ns)
    )
}

/// The time sync agent's line when it slews the clock: `offset_ns` measured over a round trip
/// of `delay_ns`, the clock run at `rate_ppm` (`freq_ppm` of it its frequency correction),
/// the next measurement in `next_poll_s`.
pub fn slew_line(
    offset_ns: i64,
    delay_ns: i64,
    rate_ppm: f64,
    freq_ppm: f64,
    next_poll_s: u64,
) -> String {
    format!(
        "{SLEW}{} (delay {}), rate {rate_ppm:+.1} ppm, freq {freq_ppm:+.1} ppm, next {next_poll_s} s",
        ms(offset_ns),
        ms(delay_ns)
    )
}

/// The offset (ms) of the [`step_line`] or [`slew_line`] in the console line `line`, or
/// `None`.
pub fn parse_offset_ms(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once(STEP).or_else(|| line.split_once(SLEW))?;
    rest.split(" ms").next()?.trim().parse().ok()
}

/// The control agent's line when it turns away a connection from `cid`, which is not the host.
pub fn refused_peer_line(cid: u32) -> String {
    format!("minke agent control: refused a connection from cid {cid}: only the host may connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_lines_round_trip() {
        for (name, ended, delay_ms) in [
            ("crasher", Ended::Code(1), 100),
            ("timesync", Ended::Signal(9), 0),
            ("a.b-c_d@e", Ended::Code(-1), u64::MAX),
            ("x", Ended::Code(i32::MIN), 7),
            ("x", Ended::Signal(i32::MAX), 7),
        ] {
            let line = restart_line(name, ended, delay_ms);
            let want = Some(Restart {
                name,
                ended,
                delay_ms,
            });
            assert_eq!(parse_restart(&line), want, "{line}");
            // As the console shows it: behind PID1's prefix, a timestamp, a carriage return.
            let shown = format!("[    2.1] minke-init: {line}\r");
            assert_eq!(parse_restart(&shown), want, "{shown}");
        }
        assert_eq!(
            restart_line("crasher", Ended::Code(1), 100),
            "crasher exited with status 1; restarting in 100 ms"
        );
        assert_eq!(Ended::Signal(9).to_string(), "killed by signal 9");
    }

    #[test]
    fn garbage_is_no_restart() {
        for line in [
            "",
            "; restarting in 100 ms",
            " exited with status 1; restarting in 100 ms",
            "minke-init: crasher exited with status 1; restarting in garbage",
            "minke-init: crasher exited with status 1; restarting in 100",
            "minke-init: crasher exited with status 1; restarting in -1 ms",
            "minke-init: crasher exited with status 1; restarting in 99999999999999999999 ms",
            "minke-init: crasher exited with status x; restarting in 100 ms",
            "minke-init: crasher killed by signal ; restarting in 100 ms",
            "minke-init: crasher stopped; restarting in 100 ms",
            "minke-init: crasher exited with status 1; not restarted",
            "minke-init: crasher exited with status 1",
            "restarting in exited with status ; ms",
            "\u{0}; restarting in \u{0} ms",
        ] {
            assert_eq!(parse_restart(line), None, "{line:?}");
        }
    }

    #[test]
    fn timesync_lines_round_trip() {
        let step = step_line(5_001_610_000, 400_000, 0.0);
        assert_eq!(
            step,
            "minke agent timesync: step +5001.610 ms (delay +0.400 ms), rate +0.0 ppm"
        );
        let slew = slew_line(-15_000, 300_000, -1.3, 3.5, 64);
        assert_eq!(
            slew,
            "minke agent timesync: slew offset -0.015 ms (delay +0.300 ms), rate -1.3 ppm, \
             freq +3.5 ppm, next 64 s"
        );
        assert_eq!(parse_offset_ms(&format!("timesync: {step}")), Some(5001.61));
        assert_eq!(parse_offset_ms(&format!("timesync: {slew}")), Some(-0.015));
        assert!(parse_offset_ms(&format!("x {RESUME_RESYNC}")).is_none());
    }

    #[test]
    fn garbage_is_no_offset() {
        for line in [
            "",
            "control: something else 3 ms",
            "minke agent timesync: slew offset garbage ms",
            "minke agent timesync: step ",
            "minke agent timesync: step  ms",
            "minke agent timesync: clock jump of +3.000 ms seen, resyncing",
            "step +1.000 ms (delay +0.1 ms)",
        ] {
            assert_eq!(parse_offset_ms(line), None, "{line:?}");
        }
    }

    /// Every cut of real lines, and of lines with their numbers swapped for others: the
    /// parsers answer, whatever they answer.
    #[test]
    fn parsers_take_any_text() {
        let lines = [
            restart_line("crasher", Ended::Code(1), 100),
            restart_line("timesync", Ended::Signal(9), 3),
            step_line(5_001_610_000, 400_000, 0.0),
            slew_line(-15_000, 300_000, -1.3, 3.5, 64),
            format!("héllo ✓ {RESUME_RESYNC}"),
        ];
        for line in &lines {
            for (i, _) in line.char_indices() {
                for cut in [&line[..i], &line[i..]] {
                    let _ = parse_restart(cut);
                    let _ = parse_offset_ms(cut);
                }
            }
            for odd in [
                "",
                "-",
                "+",
                "nan",
                "inf",
                "1e999",
                "99999999999999999999999",
                " ",
            ] {
                let swapped: String = line
                    .split(|c: char| c.is_ascii_digit())
                    .collect::<Vec<_>>()
                    .join(odd);
                let _ = parse_restart(&swapped);
                let _ = parse_offset_ms(&swapped);
            }
        }
    }

    #[test]
    fn the_refused_peer_line_names_the_peer() {
        assert_eq!(
            refused_peer_line(1),
            "minke agent control: refused a connection from cid 1: only the host may connect"
        );
    }
}
