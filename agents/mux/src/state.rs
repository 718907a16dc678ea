//! The state every thread of a [`Mux`](crate::Mux) shares under one lock: the session (up or
//! not, the guest's nonce, the session frame to send), its stream table, the refusals waiting
//! to be sent and the counters; and the condition variable that wakes whoever waits on it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use minke_protocol::mux::MuxFrame;

use crate::stream::{Stream, Streams};
use crate::{Acceptor, MuxStats, Role};

/// Refusals of streams that were never created, kept for sending; more are dropped.
const MAX_LOOSE: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) up: bool,
    pub(crate) closed: bool,
    /// Guest: the nonce of the session it asked for.
    pub(crate) nonce: u64,
    /// Guest: why the host refused the session.
    pub(crate) refused: Option<String>,
    pub(crate) send_session: Option<MuxFrame>,
    pub(crate) send_pad: bool,
    /// Bumped whenever a session ends, so threads of an old session notice.
    pub(crate) epoch: u64,
    pub(crate) streams: Streams,
    pub(crate) next_id: u32,
    /// Where the next data round starts, for fairness between streams.
    pub(crate) rr: usize,
    pub(crate) loose: VecDeque<MuxFrame>,
    pub(crate) stats: MuxStats,
}

impl State {
    pub(crate) fn live(&mut self, id: u32, epoch: u64) -> Option<&mut Stream> {
        if self.epoch != epoch {
            return None;
        }
        self.streams.get_mut(id)
    }

    /// Ends the session: every stream is shut down and forgotten.
    pub(crate) fn end_session(&mut self) {
        self.up = false;
        for (_, s) in &self.streams.0 {
            s.shutdown_local();
        }
        self.streams.0.clear();
        self.loose.clear();
        self.epoch += 1;
    }

    pub(crate) fn refuse(&mut self, id: u32) {
        if self.loose.len() < MAX_LOOSE {
            self.loose.push_back(MuxFrame::Refuse { id });
        }
    }
}

pub(crate) struct Shared {
    pub(crate) role: Role,
    st: Mutex<State>,
    cv: Condvar,
    pub(crate) acceptor: Acceptor,
}

impl Shared {
    /// The shared state of a mux of `role` starting from `st`, serving the peer's streams with
    /// `acceptor`.
    pub(crate) fn new(role: Role, st: State, acceptor: Acceptor) -> Shared {
        Shared {
            role,
            st: Mutex::new(st),
            cv: Condvar::new(),
            acceptor,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until notified or `deadline`; `None` once the deadline passed.
    pub(crate) fn wait_until<'a>(
        &self,
        g: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        Some(
            self.cv
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0),
        )
    }

    pub(crate) fn wake(&self) {
        self.cv.notify_all();
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("role", &self.role).finish()
    }
}
