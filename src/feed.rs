//! The live feed of alert changes behind `GET /api/stream`: every change, once committed, is
//! numbered and kept in a bounded ring, so a console that reconnects with `Last-Event-ID`
//! gets exactly what it missed — no gap, no duplicate — or, when the ring no longer reaches
//! back that far (or the id is from an earlier run of the engine), a `resync` telling it to
//! reload from `GET /api/alerts`.
//!
//! Publishers call [`AlertFeed::send`] after their commit (the pipeline's shards, the API's
//! lifecycle steps). Each reader walks the ring at its own pace from its own cursor, woken by
//! a `watch` channel; nothing is queued per reader, so a slow console costs no memory and
//! never slows a publisher: if the ring moves past it, it is told to resync.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::AlertChange;
use crate::telemetry::ResyncReason;

/// The default number of changes kept for replay (`[http] stream_replay_changes`): at a busy
/// centre's tens of changes per second, minutes of history — far longer than a console takes
/// to reconnect — for about 2 MB.
pub const DEFAULT_REPLAY: usize = 10_000;

/// Most changes a reader copies out of the ring per lock.
const CHUNK: usize = 256;

/// A numbered change.
#[derive(Debug, Clone)]
pub struct Numbered {
    /// Its position in this run's sequence, from 1.
    pub seq: u64,
    /// The change.
    pub change: Arc<AlertChange>,
}

/// Cheap-clone handle on the feed.
#[derive(Debug, Clone)]
pub struct AlertFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Tells ids of this run from those of an earlier one: random per start.
    run: String,
    capacity: usize,
    ring: Mutex<Ring>,
    /// The newest sequence number; readers wait on it.
    head: watch::Sender<u64>,
    /// Ends every reader's stream (engine shutdown).
    closed: CancellationToken,
}

#[derive(Debug, Default)]
struct Ring {
    /// The last sequence number given out (0: none yet).
    last: u64,
    changes: VecDeque<Numbered>,
}

/// Where a reader starts, decided from its `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// From now on (no `Last-Event-ID`): the reader first gets a `ready` event carrying the
    /// current position, so it has an id to resume from even before the first change.
    Fresh,
    /// Right after `seq`: the ring still holds everything since.
    Resume(u64),
    /// Told to reload first, then from now on.
    Resync(ResyncReason),
}

/// What a reader gets next.
#[derive(Debug, Clone)]
pub enum Item {
    /// The stream is open; `seq` is the position it starts after.
    Ready(u64),
    /// Reload from the store: changes up to `seq` may have been missed; the stream goes on
    /// after `seq`.
    Resync(ResyncReason, u64),
    /// A change.
    Change(Numbered),
}

impl AlertFeed {
    /// A feed keeping the last `capacity` changes (at least 1).
    pub fn new(capacity: usize) -> AlertFeed {
        let (head, _) = watch::channel(0);
        AlertFeed {
            inner: Arc::new(Inner {
                run: format!("{:016x}", rand::random::<u64>()),
                capacity: capacity.max(1),
                ring: Mutex::new(Ring::default()),
                head,
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Publishes a committed change; returns its sequence number. Never waits on readers.
    pub fn send(&self, change: AlertChange) -> u64 {
        let mut ring = self.lock();
        ring.last += 1;
        let seq = ring.last;
        ring.changes.push_back(Numbered {
            seq,
            change: Arc::new(change),
        });
        if ring.changes.len() > self.inner.capacity {
            ring.changes.pop_front();
        }
        // Inside the lock, so the head readers see only ever grows.
        self.inner.head.send_replace(seq);
        seq
    }

    /// The SSE `id` of a position: `<run>-<seq>`.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.inner.run)
    }

    /// The newest sequence number, as a `watch`: it moves after every committed change (the
    /// notifications outbox wakes on it).
    pub fn head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    /// How many changes the ring keeps.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Ends every reader's stream; later readers end at once.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// A reader starting according to `last_event_id` (the `Last-Event-ID` header).
    pub fn reader(&self, last_event_id: Option<&str>) -> Reader {
        let ring = self.lock();
        let head = ring.last;
        // The oldest position a reader may resume after: the one just before the ring's start.
        let floor = ring.changes.front().map_or(head, |n| n.seq - 1);
        drop(ring);
        let start = match last_event_id.map(str::trim) {
            None | Some("") => Start::Fresh,
            Some(id) => match self.parse_id(id) {
                Some(seq) if seq > head => Start::Resync(ResyncReason::UnknownId),
                Some(seq) if seq >= floor => Start::Resume(seq),
                Some(_) => Start::Resync(ResyncReason::TooOld),
                None => Start::Resync(ResyncReason::UnknownId),
            },
        };
        Reader {
            feed: self.clone(),
            rx: self.inner.head.subscribe(),
            cursor: match start {
                Start::Resume(seq) => seq,
                _ => head,
            },
            start: Some(start),
            pending: VecDeque::new(),
        }
    }

    /// The sequence number of one of this run's ids.
    fn parse_id(&self, id: &str) -> Option<u64> {
        let (run, seq) = id.rsplit_once('-')?;
        (run == self.inner.run).then_some(())?;
        seq.parse().ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave the ring half-changed (push, then pop).
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One client's position in the feed.
#[derive(Debug)]
pub struct Reader {
    feed: AlertFeed,
    rx: watch::Receiver<u64>,
    /// The last position delivered (or skipped by a resync).
    cursor: u64,
    /// The first item still to give, decided when connecting.
    start: Option<Start>,
    /// Changes copied out of the ring, not yet given.
    pending: VecDeque<Numbered>,
}

impl Reader {
    /// How this reader started.
    pub fn start(&self) -> Option<&Start> {
        self.start.as_ref()
    }

    /// The next item; `None` once the feed is closed.
    pub async fn next(&mut self) -> Option<Item> {
        match self.start.take() {
            Some(Start::Fresh) => return Some(Item::Ready(self.cursor)),
            Some(Start::Resync(reason)) => return Some(Item::Resync(reason, self.cursor)),
            Some(Start::Resume(_)) | None => {}
        }
        loop {
            if let Some(n) = self.pending.pop_front() {
                return Some(Item::Change(n));
            }
            // Mark the head seen before reading the ring, so a change published after the
            // read wakes the wait below.
            self.rx.borrow_and_update();
            if let Some(resync) = self.fill() {
                return Some(resync);
            }
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.feed.inner.closed.cancelled() => return None,
            }
        }
    }

    /// Copies the next changes after the cursor out of the ring; a resync when the ring has
    /// moved past the cursor.
    fn fill(&mut self) -> Option<Item> {
        let ring = self.feed.lock();
        // An empty ring holds nothing after the cursor.
        let front = ring.changes.front()?;
        if front.seq > self.cursor + 1 {
            self.cursor = ring.last;
            return Some(Item::Resync(ResyncReason::FellBehind, self.cursor));
        }
        // Sequence numbers are consecutive, so the cursor's successor is at a known offset.
        let skip = (self.cursor + 1 - front.seq) as usize;
        self.pending
            .extend(ring.changes.iter().skip(skip).take(CHUNK).cloned());
        if let Some(last) = self.pending.back() {
            self.cursor = last.seq;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: i64) -> AlertChange {
        AlertChange {
            alert_id: id,
            device_id: format!("d{id}"),
            kind: "sos".into(),
            severity: "critical".into(),
            action: "opened".into(),
        }
    }

    async fn take(r: &mut Reader, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(match r.next().await.unwrap() {
                Item::Ready(s) => format!("ready {s}"),
                Item::Resync(why, s) => format!("resync {} {s}", why.as_str()),
                Item::Change(n) => format!("{} {}", n.seq, n.change.alert_id),
            });
        }
        out
    }

    #[tokio::test]
    async fn a_reader_resuming_inside_the_ring_gets_exactly_what_followed() {
        let feed = AlertFeed::new(4);
        for i in 1..=3 {
            feed.send(change(i));
        }
        let mut r = feed.reader(Some(&feed.event_id(1)));
        assert_eq!(r.start(), Some(&Start::Resume(1)));
        feed.send(change(4));
        assert_eq!(take(&mut r, 3).await, ["2 2", "3 3", "4 4"]);
    }

    #[tokio::test]
    async fn a_fresh_reader_starts_with_ready_and_then_only_new_changes() {
        let feed = AlertFeed::new(4);
        feed.send(change(1));
        let mut r = feed.reader(None);
        feed.send(change(2));
        assert_eq!(take(&mut r, 2).await, ["ready 1", "2 2"]);
    }

    #[tokio::test]
    async fn ids_of_another_run_or_beyond_the_ring_or_malformed_ask_for_a_resync() {
        let feed = AlertFeed::new(2);
        for i in 1..=5 {
            feed.send(change(i));
        }
        // The ring holds 4 and 5, so 3 is the oldest position to resume after.
        assert_eq!(
            feed.reader(Some(&feed.event_id(3))).start(),
            Some(&Start::Resume(3))
        );
        let mut r = feed.reader(Some(&feed.event_id(2)));
        assert_eq!(take(&mut r, 1).await, ["resync too_old 5"]);
        let other = AlertFeed::new(2);
        for id in [other.event_id(1), "nonsense".into(), feed.event_id(99)] {
            let mut r = feed.reader(Some(&id));
            assert_eq!(take(&mut r, 1).await, ["resync unknown_id 5"], "{id}");
        }
        feed.send(change(6));
        assert_eq!(take(&mut r, 1).await, ["6 6"]);
    }

    #[tokio::test]
    async fn a_reader_the_ring_moved_past_is_told_to_resync_then_continues() {
        let feed = AlertFeed::new(3);
        let mut r = feed.reader(None);
        assert_eq!(take(&mut r, 1).await, ["ready 0"]);
        for i in 1..=5 {
            feed.send(change(i));
        }
        assert_eq!(take(&mut r, 1).await, ["resync fell_behind 5"]);
        feed.send(change(6));
        assert_eq!(take(&mut r, 1).await, ["6 6"]);
    }

    #[tokio::test]
    async fn closing_ends_waiting_readers() {
        let feed = AlertFeed::new(3);
        let mut r = feed.reader(None);
        assert_eq!(take(&mut r, 1).await, ["ready 0"]);
        let waiting = tokio::spawn(async move { r.next().await.is_none() });
        feed.close();
        assert!(waiting.await.unwrap());
    }
}
