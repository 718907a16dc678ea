//! Boot chart: the guest's boot timeline and the host's measurements as an SVG of bars
//! (plain text, no dependency).

use std::fmt::Write;
use std::time::Duration;

use minke_protocol::config::BootTimeline;

/// One bar of the chart, times from QEMU's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Label.
    pub label: String,
    /// Start, ms after QEMU started.
    pub start_ms: f64,
    /// End, ms after QEMU started.
    pub end_ms: f64,
}

/// Turns a guest timeline into bars on the host's time axis.
///
/// `ready` is how long after QEMU's start the host's agent handshake succeeded; the guest's
/// `ready` event (CLOCK_BOOTTIME) is pinned to it, which places the kernel's start on the host
/// axis. `cmd` is the `(start, end)` of the command run after ready, if any.
pub fn boot_bars(
    timeline: &BootTimeline,
    ready: Duration,
    cmd: Option<(Duration, Duration)>,
) -> Vec<Bar> {
    let ms = |ns: u64| ns as f64 / 1e6;
    let at = |what: &str| {
        timeline
            .events
            .iter()
            .find(|e| e.what == what)
            .map(|e| ms(e.boottime_ns))
    };
    let ready_ms = ready.as_secs_f64() * 1e3;
    let guest_ready = at("ready").or_else(|| timeline.events.last().map(|e| ms(e.boottime_ns)));
    let kernel0 = guest_ready.map(|g| (ready_ms - g).max(0.0)).unwrap_or(0.0);
    let mut bars = vec![Bar {
        label: "firmware + kernel load".into(),
        start_ms: 0.0,
        end_ms: kernel0,
    }];
    let mut stage = |label: &str, from: Option<f64>, to: Option<f64>| {
        if let (Some(a), Some(b)) = (from, to) {
            bars.push(Bar {
                label: label.into(),
                start_ms: kernel0 + a,
                end_ms: kernel0 + b,
            });
        }
    };
    stage("kernel", Some(0.0), at("pid1"));
    stage("PID1 → modules", at("pid1"), at("modules"));
    stage("modules → disks", at("modules"), at("disks"));
    stage(
        "disks → agents ready",
        at("disks").or(at("modules")),
        at("ready"),
    );
    for e in &timeline.events {
        if let Some(name) = e.what.strip_prefix("started:") {
            let end = at(&format!("ready:{name}")).unwrap_or(ms(e.boottime_ns));
            bars.push(Bar {
                label: name.into(),
                start_ms: kernel0 + ms(e.boottime_ns),
                end_ms: kernel0 + end,
            });
        }
    }
    bars.push(Bar {
        label: "host: agent ready".into(),
        start_ms: 0.0,
        end_ms: ready_ms,
    });
    if let Some((a, b)) = cmd {
        bars.push(Bar {
            label: "CMD".into(),
            start_ms: a.as_secs_f64() * 1e3,
            end_ms: b.as_secs_f64() * 1e3,
        });
    }
    bars
}

/// Renders [`boot_bars`] as an SVG document.
pub fn boot_chart_svg(
    timeline: &BootTimeline,
    ready: Duration,
    cmd: Option<(Duration, Duration)>,
) -> String {
    render(&boot_bars(timeline, ready, cmd))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders bars as an SVG document.
pub fn render(bars: &[Bar]) -> String {
    let (left, width, row) = (190.0, 600.0, 22.0);
    let max = bars.iter().map(|b| b.end_ms).fold(1.0_f64, f64::max);
    let scale = width / max;
    let height = row * (bars.len() as f64 + 2.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 80.0
    );
    for (i, b) in bars.iter().enumerate() {
        let y = row * (i as f64 + 0.5);
        let x = left + b.start_ms * scale;
        let w = ((b.end_ms - b.start_ms) * scale).max(1.0);
        let _ = writeln!(
            s,
            r#"<text x="4" y="{}">{}</text>"#,
            y + 14.0,
            esc(&b.label)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#4a7ebb"/>"##,
            h = row - 6.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{:.0} ms</text>"#,
            x + w + 4.0,
            y + 14.0,
            b.end_ms - b.start_ms
        );
    }
    let axis_y = row * (bars.len() as f64 + 1.0);
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{axis_y}" x2="{x2}" y2="{axis_y}" stroke="black"/><text x="{left}" y="{t}">0</text><text x="{x2}" y="{t}">{max:.0} ms after QEMU start</text>"#,
        x2 = left + width,
        t = axis_y + 14.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use minke_protocol::config::BootEvent;

    #[test]
    fn bars_are_placed_on_the_host_axis() {
        let ev = |ms: u64, what: &str| BootEvent {
            boottime_ns: ms * 1_000_000,
            what: what.into(),
        };
        let t = BootTimeline {
            events: vec![
                ev(900, "pid1"),
                ev(1000, "modules"),
                ev(1100, "disks"),
                ev(1150, "started:control"),
                ev(1200, "ready:control"),
                ev(1300, "ready"),
            ],
        };
        let bars = boot_bars(
            &t,
            Duration::from_millis(2300),
            Some((Duration::from_millis(2300), Duration::from_millis(2400))),
        );
        assert_eq!(
            bars[0],
            Bar {
                label: "firmware + kernel load".into(),
                start_ms: 0.0,
                end_ms: 1000.0
            }
        );
        assert_eq!(bars[1].end_ms, 1900.0);
        let control = bars.iter().find(|b| b.label == "control").unwrap();
        assert_eq!((control.start_ms, control.end_ms), (2150.0, 2200.0));
        assert_eq!(bars.last().unwrap().label, "CMD");
        let svg = render(&bars);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("PID1 → modules"));
    }
}
