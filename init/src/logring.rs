//! Output of supervised processes: a line splitter for their pipes, and per-unit log files
//! under `/run/minke/log/NAME` kept to a bounded size (the previous part is `NAME.1`).

use std::fs::File;
use std::io::Write;

/// Directory of the per-unit logs.
pub const LOG_DIR: &str = "/run/minke/log";
/// Size at which `NAME` is moved to `NAME.1` and started afresh.
pub const LOG_MAX: u64 = 64 * 1024;
/// Longest line kept whole; longer ones are cut into pieces of this size.
pub const LINE_MAX: usize = 1024;

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `out` for each complete line (without the newline).
    pub fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let room = LINE_MAX.saturating_sub(self.partial.len());
            match data.iter().take(room).position(|&b| b == b'\n') {
                Some(pos) => {
                    let (line, rest) = data.split_at(pos);
                    self.partial.extend_from_slice(line);
                    out(trim_cr(&self.partial));
                    self.partial.clear();
                    data = rest.get(1..).unwrap_or_default();
                }
                None if data.len() < room => {
                    self.partial.extend_from_slice(data);
                    data = &[];
                }
                None => {
                    let (piece, rest) = data.split_at(room);
                    self.partial.extend_from_slice(piece);
                    out(&self.partial);
                    self.partial.clear();
                    data = rest;
                }
            }
        }
    }

    /// End of stream: emits a last unterminated line if any.
    pub fn finish(&mut self, out: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            out(trim_cr(&self.partial));
            self.partial.clear();
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A bounded log file: `DIR/NAME` rotated to `DIR/NAME.1` past `max` bytes.
#[derive(Debug)]
pub struct LogFile {
    path: String,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl LogFile {
    /// The log of unit `name` in `dir`.
    pub fn new(dir: &str, name: &str, max: u64) -> Self {
        LogFile {
            path: format!("{dir}/{name}"),
            file: None,
            size: 0,
            max,
        }
    }

    /// Appends one line (a newline is added).
    pub fn append(&mut self, line: &[u8]) {
        let need = line.len() as u64 + 1;
        if self.file.is_some() && self.size + need > self.max {
            self.file = None;
            let _ = std::fs::rename(&self.path, format!("{}.1", self.path));
        }
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => {
                    self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                }
                Err(_) => return,
            }
        }
        if let Some(f) = &mut self.file {
            let mut rec = Vec::with_capacity(line.len() + 1);
            rec.extend_from_slice(line);
            rec.push(b'\n');
            if f.write_all(&rec).is_ok() {
                self.size += need;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |l| {
                out.push(String::from_utf8_lossy(l).into_owned())
            });
        }
        s.finish(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(lines(&[b"ab", b"c\nd\r\n\nef"]), ["abc", "d", "", "ef"]);
        assert!(lines(&[b""]).is_empty());
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'x'; LINE_MAX * 2 + 5];
        let out = lines(&[&long, b"\n"]);
        assert_eq!(
            out.iter().map(String::len).collect::<Vec<_>>(),
            [LINE_MAX, LINE_MAX, 5]
        );
    }

    #[test]
    fn log_file_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("minke-init-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let d = dir.to_str().expect("utf-8");
        let mut log = LogFile::new(d, "svc", 100);
        for i in 0..50 {
            log.append(format!("line {i:03}").as_bytes());
        }
        let cur = std::fs::read_to_string(dir.join("svc")).expect("log");
        let old = std::fs::read_to_string(dir.join("svc.1")).expect("rotated");
        assert!(cur.len() <= 100 && old.len() <= 100);
        assert!(cur.ends_with("line 049\n"));
        assert!(old.ends_with(&format!("line {:03}\n", 49 - cur.lines().count())));
        std::fs::remove_dir_all(&dir).ok();
    }
}
