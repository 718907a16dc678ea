//! The host's `Data`… `End` frames of an upload read as one byte stream.

use std::io::{self, Read};

use minke_protocol::wire::read_frame;
use minke_protocol::HostMsg;

use crate::control::ControlError;

/// Reads the host's `Data`… `End` stream as bytes.
pub(super) struct DataIn<'a, R: Read> {
    r: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    /// Set when the stream broke (transport failure or a message other than Data/End).
    broken: Option<ControlError>,
}

impl<'a, R: Read> DataIn<'a, R> {
    pub(super) fn new(r: &'a mut R) -> Self {
        DataIn {
            r,
            buf: Vec::new(),
            pos: 0,
            done: false,
            broken: None,
        }
    }

    /// Reads and drops whatever is left up to `End`.
    pub(super) fn drain(&mut self) -> Result<(), ControlError> {
        let mut sink = [0u8; 8192];
        while !self.done {
            if self.read(&mut sink).is_err() {
                break;
            }
        }
        match self.broken.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<R: Read> Read for DataIn<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            if self.broken.is_some() {
                return Err(io::Error::other("upload stream broken"));
            }
            match read_frame::<_, HostMsg>(self.r) {
                Ok(HostMsg::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(HostMsg::End) => self.done = true,
                Ok(other) => {
                    let msg = format!(
                        "expected Data or End during an upload, got {}",
                        crate::control::msg_name(&other)
                    );
                    self.broken = Some(ControlError::Refused(msg.clone()));
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
                Err(e) => {
                    let ioe = io::Error::other(e.to_string());
                    self.broken = Some(ControlError::Frame(e));
                    return Err(ioe);
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
