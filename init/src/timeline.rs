//! The boot timeline: events stamped with CLOCK_BOOTTIME, rewritten atomically to
//! `/run/minke/boot.json` whenever the init goes idle with new events.

use minke_protocol::config::{BootEvent, BootTimeline};

/// CLOCK_BOOTTIME in nanoseconds.
pub fn boottime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in milliseconds (timers of the event loop).
pub fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as u64 / 1_000_000)
}

/// The timeline and where it is written.
#[derive(Debug)]
pub struct Timeline {
    timeline: BootTimeline,
    path: Option<String>,
    /// Events recorded since the file was last written.
    dirty: bool,
}

impl Timeline {
    /// A timeline written to `path` (`None`: kept in memory only, for tests).
    pub fn new(path: Option<&str>) -> Self {
        Timeline {
            timeline: BootTimeline::default(),
            path: path.map(str::to_owned),
            dirty: false,
        }
    }

    /// Records `what` at `boottime_ns` (in time order: a moment reported late goes before the
    /// later events) and rewrites the file.
    pub fn record_at(&mut self, boottime_ns: u64, what: &str) {
        let events = &mut self.timeline.events;
        let at = events.partition_point(|e| e.boottime_ns <= boottime_ns);
        events.insert(
            at,
            BootEvent {
                boottime_ns,
                what: what.to_owned(),
            },
        );
        self.dirty = true;
    }

    /// Records `what` now.
    pub fn record(&mut self, what: &str) {
        self.record_at(boottime_ns(), what);
    }

    /// Whether `what` was recorded.
    #[cfg(test)]
    pub fn has(&self, what: &str) -> bool {
        self.timeline.events.iter().any(|e| e.what == what)
    }

    /// Writes the file (whole, atomically) if events were recorded since the last write.
    ///
    /// Called when the init is about to wait and before the `ready` marker, not per event:
    /// during boot, events come in bursts, and under emulation each write costs PID1 as much as
    /// a boot stage.
    pub fn flush(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let Some(path) = &self.path else { return };
        let Ok(json) = serde_json::to_vec(&self.timeline) else {
            return;
        };
        let tmp = format!("{path}.tmp");
        let res = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = res {
            crate::console::log!("cannot write {path}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_rewritten_whole_on_flush() {
        let dir = std::env::temp_dir().join(format!("minke-init-tl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("boot.json");
        let path_s = path.to_str().expect("utf-8 tmp path");
        let mut t = Timeline::new(Some(path_s));
        t.record_at(5, "pid1");
        t.flush();
        assert!(path.exists());
        t.record_at(9, "ready:control");
        assert_eq!(
            serde_json::from_slice::<BootTimeline>(&std::fs::read(&path).expect("written"))
                .expect("json")
                .events
                .len(),
            1,
            "not rewritten before the flush"
        );
        t.flush();
        let back: BootTimeline =
            serde_json::from_slice(&std::fs::read(&path).expect("written")).expect("json");
        assert_eq!(back.events.len(), 2);
        assert_eq!(
            back.events[1],
            BootEvent {
                boottime_ns: 9,
                what: "ready:control".into()
            }
        );
        assert!(t.has("pid1") && !t.has("ready"));
        assert!(!dir.join("boot.json.tmp").exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn clocks_move_forward() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(b >= a && a > 0);
    }
}
