//! Who may hold a device connection: the limits every listener shares, decided without I/O so
//! the rules can be tested on their own.
//!
//! A new connection is refused at once when its address already holds
//! `max_connections_per_address` connections. When its listener holds `max_connections`, or
//! all listeners together hold the descriptor-derived total cap, the oldest connection of
//! the listener (or of any listener) that has not yet identified its device is evicted to
//! make room, as sshd's `MaxStartups` sheds unauthenticated sessions: a flood of silent
//! connections then cycles through the room meant for logins instead of locking real
//! devices out until the login deadline. Only when every connection has identified its
//! device is the new one refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::tcp::Protocol;

/// Evicted connections may still hold their descriptor for the moment their task needs to
/// notice; at most this many evictions are outstanding, so the total can exceed its cap by
/// this much and no more. Part of the descriptor reserve ([`descriptor_reserve`]).
pub const EVICTION_SLACK: usize = 32;

/// Descriptors the process needs besides device connections: stdio, the runtime's epoll and
/// wake-up descriptors, signal pipes, the HTTP and device listeners, the broker connection
/// (and the embedded broker's own side of it), files read on a reload.
const PROCESS_DESCRIPTORS: usize = 64;
/// Concurrent operator API clients kept room for: consoles holding a live feed, API calls,
/// `/metrics` scrapes and `/readyz` probes.
const HTTP_CLIENTS: usize = 128;
/// Descriptors per store connection: a PostgreSQL socket, or a SQLite database with its
/// `-wal` and `-shm` files.
const DESCRIPTORS_PER_STORE_CONNECTION: usize = 3;

/// Descriptors kept for everything but device connections, with `store_connections` store
/// connections: 64 for the process, 128 for operator API clients, 3 per store connection and
/// [`EVICTION_SLACK`]. (Devices that reach an embedded MQTT broker share the same limit and
/// are not counted; production uses an external broker.)
pub fn descriptor_reserve(store_connections: u32) -> usize {
    PROCESS_DESCRIPTORS
        + HTTP_CLIENTS
        + EVICTION_SLACK
        + DESCRIPTORS_PER_STORE_CONNECTION * store_connections as usize
}

/// The process's open-files limit (RLIMIT_NOFILE, soft), `None` when unlimited or unreadable.
pub fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The total device connections allowed over all listeners: what the listeners' own limits
/// add up to, but no more than the open-files limit leaves after `reserve` (at least one).
pub fn total_cap(configured: usize, open_files: Option<u64>, reserve: usize) -> usize {
    match open_files {
        Some(limit) => {
            let room = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(reserve);
            configured.min(room).max(1)
        }
        None => configured,
    }
}

/// Why a connection was refused: the `reason` label of
/// `anxin_tcp_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds `max_connections_per_address` connections.
    PerAddress,
    /// Its listener holds `max_connections`, all of them identified.
    ListenerFull,
    /// All listeners hold the descriptor-derived total cap, all of them identified.
    Descriptors,
}

impl Refusal {
    /// Every refusal, for the metric's zero series.
    pub const ALL: [Refusal; 3] = [
        Refusal::PerAddress,
        Refusal::ListenerFull,
        Refusal::Descriptors,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address",
            Refusal::ListenerFull => "listener_full",
            Refusal::Descriptors => "descriptors",
        }
    }
}

/// The limits, as [`Gate::new`] takes them.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Connections per listener.
    pub per_listener: usize,
    /// Connections over all listeners.
    pub total: usize,
    /// Connections per remote IP address, over all listeners.
    pub per_address: usize,
}

/// The shared admission state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Woken when an evicted connection has closed.
    evicted_closed: Notify,
}

#[derive(Debug)]
struct State {
    caps: Caps,
    total: usize,
    by_family: [usize; 4],
    by_address: HashMap<IpAddr, usize>,
    /// Connections that have not identified their device, per family, oldest (lowest
    /// connection number) first, with the token that closes them.
    pending: [BTreeMap<u64, CancellationToken>; 4],
    /// Evicted connections whose task has not closed them yet.
    evicted: HashSet<u64>,
}

fn slot(p: Protocol) -> usize {
    match p {
        Protocol::Watch => 0,
        Protocol::Gt06 => 1,
        Protocol::Jt808 => 2,
        Protocol::Trv => 3,
    }
}

/// A connection that was admitted: it holds its place until dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: Gate,
    family: usize,
    ip: IpAddr,
    id: u64,
}

/// What [`Gate::admit`] did besides admitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The family of the connection closed to make room.
    pub family: Protocol,
    /// Its connection number.
    pub id: u64,
}

impl Gate {
    /// A gate with these limits and no connection.
    pub fn new(caps: Caps) -> Gate {
        Gate(Arc::new(Shared {
            state: Mutex::new(State {
                caps,
                total: 0,
                by_family: [0; 4],
                by_address: HashMap::new(),
                pending: Default::default(),
                evicted: HashSet::new(),
            }),
            evicted_closed: Notify::new(),
        }))
    }

    /// The limits in force.
    pub fn caps(&self) -> Caps {
        self.lock().caps
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is counters only; a panic elsewhere cannot leave it half-updated in a way
        // worse than refusing connections, so a poisoned lock is used as it is.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits connection `id` of `family` from `ip`, or says why not. `close` is cancelled if
    /// the connection is later evicted (it has not identified its device by then). A returned
    /// [`Evicted`] names the connection closed to make room.
    pub fn admit(
        &self,
        family: Protocol,
        ip: IpAddr,
        id: u64,
        close: CancellationToken,
    ) -> Result<(Ticket, Option<Evicted>), Refusal> {
        let ip = ip.to_canonical();
        let f = slot(family);
        let mut s = self.lock();
        if s.by_address.get(&ip).copied().unwrap_or(0) >= s.caps.per_address {
            return Err(Refusal::PerAddress);
        }
        let listener_full = s.by_family[f] >= s.caps.per_listener;
        let total_full = s.total >= s.caps.total;
        let mut evicted = None;
        if listener_full || total_full {
            let refusal = if listener_full {
                Refusal::ListenerFull
            } else {
                Refusal::Descriptors
            };
            if s.evicted.len() >= EVICTION_SLACK {
                return Err(refusal);
            }
            // Evicting from this listener frees a place in both limits; from another listener
            // only in the total.
            let victim = if listener_full {
                s.oldest_pending(Some(f))
            } else {
                s.oldest_pending(None)
            };
            let Some((vf, vid)) = victim else {
                return Err(refusal);
            };
            if let Some(token) = s.pending[vf].remove(&vid) {
                token.cancel();
            }
            s.evicted.insert(vid);
            evicted = Some(Evicted {
                family: Protocol::ALL[vf],
                id: vid,
            });
        }
        s.total += 1;
        s.by_family[f] += 1;
        *s.by_address.entry(ip).or_insert(0) += 1;
        s.pending[f].insert(id, close);
        drop(s);
        Ok((
            Ticket {
                gate: self.clone(),
                family: f,
                ip,
                id,
            },
            evicted,
        ))
    }

    /// Like [`Gate::admit`], but when the refusal is only because evicted connections have not
    /// closed yet, waits up to `wait` for one of them to close and tries again. The accept loop
    /// pauses meanwhile (the kernel's backlog holds what arrives), so a flood is shed by
    /// eviction rather than by refusing the device that arrives in the middle of it.
    pub async fn admit_or_wait(
        &self,
        family: Protocol,
        ip: IpAddr,
        id: u64,
        close: CancellationToken,
        wait: std::time::Duration,
    ) -> Result<(Ticket, Option<Evicted>), Refusal> {
        let closed = self.0.evicted_closed.notified();
        tokio::pin!(closed);
        // Registered before the check, so a close in between is not missed.
        closed.as_mut().enable();
        match self.admit(family, ip, id, close.clone()) {
            Err(r) if r != Refusal::PerAddress && !self.lock().evicted.is_empty() => {
                let _ = tokio::time::timeout(wait, closed).await;
                self.admit(family, ip, id, close)
            }
            done => done,
        }
    }

    /// Connections held now: total, and per family in [`Protocol::ALL`] order.
    pub fn held(&self) -> (usize, [usize; 4]) {
        let s = self.lock();
        (s.total, s.by_family)
    }
}

impl State {
    /// The oldest connection not yet identified: of family `only`, or of any family.
    fn oldest_pending(&self, only: Option<usize>) -> Option<(usize, u64)> {
        (0..4)
            .filter(|f| only.is_none_or(|o| o == *f))
            .filter_map(|f| self.pending[f].keys().next().map(|id| (f, *id)))
            .min_by_key(|(_, id)| *id)
    }
}

impl Ticket {
    /// The connection identified its device: it can no longer be evicted.
    pub fn identified(&self) {
        self.gate.lock().pending[self.family].remove(&self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.total -= 1;
        s.by_family[self.family] -= 1;
        if let Some(n) = s.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_address.remove(&self.ip);
            }
        }
        s.pending[self.family].remove(&self.id);
        let was_evicted = s.evicted.remove(&self.id);
        drop(s);
        if was_evicted {
            self.gate.0.evicted_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn gate(per_listener: usize, total: usize, per_address: usize) -> Gate {
        Gate::new(Caps {
            per_listener,
            total,
            per_address,
        })
    }

    #[test]
    fn the_per_address_limit_refuses_and_counts_mapped_ipv4_as_ipv4() {
        let g = gate(10, 10, 2);
        let a = g.admit(Protocol::Watch, ip(1), 1, CancellationToken::new());
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let b = g.admit(Protocol::Gt06, mapped, 2, CancellationToken::new());
        assert!(a.is_ok() && b.is_ok());
        let c = g.admit(Protocol::Trv, ip(1), 3, CancellationToken::new());
        assert_eq!(c.unwrap_err(), Refusal::PerAddress);
        assert!(
            g.admit(Protocol::Trv, ip(2), 4, CancellationToken::new())
                .is_ok()
        );
        drop(a);
        assert!(
            g.admit(Protocol::Trv, ip(1), 5, CancellationToken::new())
                .is_ok(),
            "a closed connection frees its address's place"
        );
    }

    #[test]
    fn a_full_listener_evicts_its_oldest_unidentified_connection() {
        let g = gate(2, 100, 100);
        let (t1, c1) = (1, CancellationToken::new());
        let (a, _) = g.admit(Protocol::Watch, ip(1), t1, c1.clone()).unwrap();
        let c2 = CancellationToken::new();
        let (b, _) = g.admit(Protocol::Watch, ip(2), 2, c2.clone()).unwrap();
        // Another family is not affected by the watch listener's limit.
        let (_other, none) = g
            .admit(Protocol::Gt06, ip(3), 3, CancellationToken::new())
            .unwrap();
        assert_eq!(none, None);
        a.identified();
        let (_c, ev) = g
            .admit(Protocol::Watch, ip(4), 4, CancellationToken::new())
            .unwrap();
        assert_eq!(
            ev,
            Some(Evicted {
                family: Protocol::Watch,
                id: 2
            }),
            "the identified connection 1 is kept, the oldest pending one goes"
        );
        assert!(c2.is_cancelled() && !c1.is_cancelled());
        drop(b);
        assert_eq!(g.held().1[0], 2);
    }

    #[test]
    fn with_every_connection_identified_the_new_one_is_refused() {
        let g = gate(100, 2, 100);
        let (a, _) = g
            .admit(Protocol::Watch, ip(1), 1, CancellationToken::new())
            .unwrap();
        let (b, _) = g
            .admit(Protocol::Jt808, ip(2), 2, CancellationToken::new())
            .unwrap();
        a.identified();
        b.identified();
        let r = g.admit(Protocol::Trv, ip(3), 3, CancellationToken::new());
        assert_eq!(r.unwrap_err(), Refusal::Descriptors);
        drop(b);
        assert!(
            g.admit(Protocol::Trv, ip(3), 4, CancellationToken::new())
                .is_ok()
        );
    }

    #[test]
    fn the_total_cap_evicts_across_families_and_overshoots_by_the_slack_at_most() {
        let g = gate(10_000, 5, 10_000);
        let mut held = Vec::new();
        for id in 0..5 {
            held.push(
                g.admit(Protocol::Gt06, ip(1), id, CancellationToken::new())
                    .unwrap()
                    .0,
            );
        }
        // Evicted tickets are not dropped here, as if their tasks had not run yet.
        let mut evictions = 0;
        for id in 5..100 {
            match g.admit(Protocol::Watch, ip(2), id, CancellationToken::new()) {
                Ok((t, ev)) => {
                    assert!(ev.is_some());
                    evictions += 1;
                    held.push(t);
                }
                Err(r) => assert_eq!(r, Refusal::Descriptors),
            }
        }
        assert_eq!(evictions, EVICTION_SLACK);
        assert_eq!(g.held().0, 5 + EVICTION_SLACK);
        // Once the evicted connections close, the total is back at its cap.
        held.drain(..EVICTION_SLACK);
        assert_eq!(g.held().0, 5);
    }

    #[tokio::test]
    async fn a_refusal_while_evictions_are_closing_waits_for_one_to_close() {
        let g = gate(100, 1, 100);
        let (first, _) = g
            .admit(Protocol::Watch, ip(1), 1, CancellationToken::new())
            .unwrap();
        // Fill the slack with evictions whose connections have not closed yet.
        let mut evicted = vec![first];
        for id in 2..2 + EVICTION_SLACK as u64 {
            evicted.push(
                g.admit(Protocol::Watch, ip(2), id, CancellationToken::new())
                    .unwrap()
                    .0,
            );
        }
        let waiting = {
            let g = g.clone();
            tokio::spawn(async move {
                g.admit_or_wait(
                    Protocol::Watch,
                    ip(3),
                    1000,
                    CancellationToken::new(),
                    std::time::Duration::from_secs(30),
                )
                .await
                .map(|(t, ev)| (t.id, ev.is_some()))
            })
        };
        // One evicted connection closes: the waiting admission goes through.
        tokio::task::yield_now().await;
        drop(evicted.remove(0));
        assert_eq!(waiting.await.unwrap(), Ok((1000, true)));
    }

    #[test]
    fn the_total_cap_follows_the_open_files_limit() {
        assert_eq!(total_cap(80_000, Some(1024), 248), 776);
        assert_eq!(total_cap(100, Some(1024), 248), 100);
        assert_eq!(total_cap(100, None, 248), 100);
        assert_eq!(total_cap(100, Some(10), 248), 1);
        assert_eq!(descriptor_reserve(8), 64 + 128 + 32 + 24);
    }
}
