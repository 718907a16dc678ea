//! The ACPI power button: find the evdev devices named "Power Button" and recognise a
//! KEY_POWER press in the `struct input_event` records they deliver.

use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

/// Size of `struct input_event` on 64-bit Linux (timeval 16 + type 2 + code 2 + value 4).
pub const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
const DEVICE_NAME: &str = "Power Button";

/// Whether `buf` (whole input_event records) holds a KEY_POWER press.
pub fn has_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(EVENT_SIZE).any(|ev| {
        let u16_at = |i: usize| {
            ev.get(i..i + 2)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_ne_bytes)
        };
        let value = ev
            .get(20..24)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_ne_bytes);
        u16_at(16) == Some(EV_KEY) && u16_at(18) == Some(KEY_POWER) && value == Some(1)
    })
}

/// Opens (non-blocking) every `/dev/input/eventN` named "Power Button" not in `known`;
/// returns the new ones with their N.
pub fn open_buttons(known: &[u32]) -> Vec<(u32, OwnedFd)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("event")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if known.contains(&n) {
            continue;
        }
        let dev_name = std::fs::read_to_string(format!("/sys/class/input/{name}/device/name"))
            .unwrap_or_default();
        if dev_name.trim() != DEVICE_NAME {
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        if let Ok(fd) = rustix::fs::open(format!("/dev/input/{name}"), flags, Mode::empty()) {
            out.push((n, fd));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&value.to_ne_bytes());
        b
    }

    #[test]
    fn only_a_power_key_press_counts() {
        let press = ev(EV_KEY, KEY_POWER, 1);
        let release = ev(EV_KEY, KEY_POWER, 0);
        let syn = ev(0, 0, 0);
        let other = ev(EV_KEY, 30, 1);
        assert!(has_power_press(
            &[syn.clone(), press.clone(), syn.clone()].concat()
        ));
        assert!(!has_power_press(&[release, syn, other].concat()));
        assert!(!has_power_press(&press[..EVENT_SIZE - 1]));
    }
}
