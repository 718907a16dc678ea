//! The power button: find the evdev devices that have a power key and are not keyboards (the
//! ACPI button on x86_64 and on UEFI boots, the GPIO key of arm64's `virt` machine on a
//! device-tree boot) and recognise a KEY_POWER press in the `struct input_event` records they
//! deliver. A keyboard's Power key is not a power button: q35 keeps its PS/2 keyboard whatever
//! QEMU is told, and nothing presses it.

use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

/// Size of `struct input_event` on 64-bit Linux (timeval 16 + type 2 + code 2 + value 4).
pub const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// A key every keyboard has and no button does.
const KEY_A: u16 = 30;

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

/// Whether a sysfs key capability bitmap (`capabilities/key`: hex words of the kernel's
/// `unsigned long`, the most significant first, separated by spaces) has `code` set.
fn has_key(bitmap: &str, code: u16) -> bool {
    let bits = usize::BITS as usize;
    let word = usize::from(code) / bits;
    bitmap
        .split_whitespace()
        .rev()
        .nth(word)
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .is_some_and(|w| w >> (usize::from(code) % bits) & 1 == 1)
}

/// Whether a device with this key capability bitmap is a power button.
fn is_power_button(keys: &str) -> bool {
    has_key(keys, KEY_POWER) && !has_key(keys, KEY_A)
}

/// Opens (non-blocking) every `/dev/input/eventN` that is a power button and not in `known`;
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
        let keys =
            std::fs::read_to_string(format!("/sys/class/input/{name}/device/capabilities/key"))
                .unwrap_or_default();
        if !is_power_button(&keys) {
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

    #[test]
    fn the_power_key_is_found_in_sysfs_bitmaps() {
        // The ACPI button (x86_64) and virt's GPIO key: bit 116 of the second 64-bit word.
        assert!(has_key("10000000000000 0\n", KEY_POWER));
        assert!(is_power_button("10000000000000 0\n"));
        // An AT keyboard's long map has it among the letters: a keyboard, not a button.
        let keyboard = "402000000 3903078f800d001 feffffdfffefffff fffffffffffffffe";
        assert!(has_key(keyboard, KEY_POWER) && has_key(keyboard, KEY_A));
        assert!(!is_power_button(keyboard));
        // A device with keys but not that one, an empty map, garbage.
        assert!(!has_key("4000000000000 0", KEY_POWER));
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
        assert!(!has_key("zz 0", KEY_POWER));
    }
}
