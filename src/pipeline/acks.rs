//! Acks in receive order, released only for the committed prefix (DESIGN.md guarantee 1).
//!
//! The MQTT poll task registers every publish here in the order it arrived; shards mark a
//! message resolved once what it produced is committed (or once it is known to be
//! redelivered). Acks go out for the longest resolved prefix, because brokers such as rumqttd
//! disconnect a client that acks out of order.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::mpsc;

/// What the ack sender needs to ack one message on the connection it arrived on.
#[derive(Debug)]
pub struct AckToken<H> {
    /// Connection generation the message arrived on; a token of an older generation is never
    /// sent, since packet ids are reused on the new connection (PITFALLS 5).
    pub generation: u64,
    /// Transport-specific handle (the received publish).
    pub handle: H,
}

struct Slot<H> {
    token: Option<AckToken<H>>,
    done: bool,
    ack: bool,
    received: Instant,
}

struct Inner<H> {
    /// Receive position of `queue[0]`.
    head: u64,
    queue: VecDeque<Slot<H>>,
    /// Tokens sent to the ack task so far.
    released: u64,
    /// Most messages ever held unreleased at once: shows the window the broker really keeps.
    peak: usize,
}

/// Orders acks. `H` is the transport's handle type.
pub struct AckTracker<H> {
    inner: Mutex<Inner<H>>,
    out: mpsc::UnboundedSender<AckToken<H>>,
}

impl<H> std::fmt::Debug for AckTracker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckTracker")
            .field("pending", &self.pending())
            .finish()
    }
}

impl<H> AckTracker<H> {
    /// A tracker sending releasable tokens to `out`. The channel is unbounded in type but
    /// bounded in fact: it never holds more than the broker's in-flight window.
    pub fn new(out: mpsc::UnboundedSender<AckToken<H>>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                head: 0,
                queue: VecDeque::new(),
                released: 0,
                peak: 0,
            }),
            out,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<H>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a received message; returns its receive position.
    pub fn register(&self, token: AckToken<H>) -> u64 {
        let mut inner = self.lock();
        let pos = inner.head + inner.queue.len() as u64;
        inner.queue.push_back(Slot {
            token: Some(token),
            done: false,
            ack: false,
            received: Instant::now(),
        });
        inner.peak = inner.peak.max(inner.queue.len());
        pos
    }

    /// Marks messages resolved: `ack` true when committed, false when they must not be acked
    /// here (a redelivered copy on the new connection will be). Releases the resolved prefix.
    pub fn resolve(&self, positions: impl IntoIterator<Item = u64>, ack: bool) {
        let mut inner = self.lock();
        for pos in positions {
            let Some(i) = pos.checked_sub(inner.head) else {
                continue;
            };
            if let Some(slot) = inner.queue.get_mut(i as usize) {
                slot.done = true;
                slot.ack = ack;
            }
        }
        while inner.queue.front().is_some_and(|s| s.done) {
            let mut slot = inner.queue.pop_front().expect("front checked");
            inner.head += 1;
            if slot.ack
                && let Some(t) = slot.token.take()
            {
                // The receiver lives as long as the MQTT task; if it is gone we are shutting
                // down and the broker will redeliver.
                let _ = self.out.send(t);
                inner.released += 1;
            }
        }
    }

    /// Tokens sent to the ack task so far.
    pub fn released(&self) -> u64 {
        self.lock().released
    }

    /// Most messages held unreleased at once since start.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// Messages received and not yet released.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    /// Age of the oldest unreleased message.
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        self.lock().queue.front().map(|s| s.received.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u32) -> AckToken<u32> {
        AckToken {
            generation: 1,
            handle: n,
        }
    }

    #[test]
    fn acks_leave_in_receive_order_only_for_the_committed_prefix() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t = AckTracker::new(tx);
        let p: Vec<u64> = (0..4).map(|i| t.register(token(i))).collect();
        t.resolve([p[2]], true);
        assert!(rx.try_recv().is_err(), "2 is committed but 0 and 1 are not");
        t.resolve([p[0]], true);
        assert_eq!(rx.try_recv().unwrap().handle, 0);
        assert!(rx.try_recv().is_err());
        t.resolve([p[1]], false);
        assert_eq!(rx.try_recv().unwrap().handle, 2, "1 is skipped, 2 follows");
        assert_eq!(t.pending(), 1);
        t.resolve([p[3]], true);
        assert_eq!(rx.try_recv().unwrap().handle, 3);
        assert_eq!(t.pending(), 0);
        assert!(t.oldest_age().is_none());
    }
}
