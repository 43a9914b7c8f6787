//! PostgreSQL connection settings the engine relies on for its commit latency: Nagle's
//! algorithm off on every connection (a commit is a few small writes answered by the server;
//! with Nagle on, each round trip can wait for a delayed ACK, ~40 ms on Linux), and TLS
//! exactly as the URL's `sslmode` asks.

mod common;

use anxin::store::Store;
use common::{TempDb, service_url};

/// The remote port of socket `fd`, if it is a TCP/IPv4 or IPv6 socket with a peer.
fn peer_port(fd: i32) -> Option<u16> {
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `addr`.
    let ok = unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) } == 0;
    if !ok {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(&raw const addr).cast() };
            Some(u16::from_be(a.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(&raw const addr).cast() };
            Some(u16::from_be(a.sin6_port))
        }
        _ => None,
    }
}

fn nodelay(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    r == 0 && v != 0
}

/// The open descriptors of this process connected to `port`.
fn sockets_to(port: u16) -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|fd| peer_port(*fd) == Some(port))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_connection_has_nagle_off() {
    let Some(admin) = service_url("ANXIN_TEST_POSTGRES_URL") else {
        return;
    };
    let db = TempDb::create(&admin).await;
    let port = common::pg_upstream(&db.url).port();
    let before = sockets_to(port).len();
    let store = Store::connect(&db.url, 4).await.unwrap();
    // Several at once, so the pool opens more than one connection.
    let pings = (0..4).map(|_| {
        let s = store.clone();
        tokio::spawn(async move { s.ping().await })
    });
    for p in pings {
        p.await.unwrap().unwrap();
    }
    let fds = sockets_to(port);
    assert!(fds.len() > before, "no connection to port {port} found");
    for fd in fds {
        assert!(nodelay(fd), "descriptor {fd} to PostgreSQL has Nagle on");
    }
    store.close().await;
}

#[tokio::test]
async fn tls_to_postgres_follows_the_url_sslmode() {
    let Some(admin) = service_url("ANXIN_TEST_POSTGRES_URL") else {
        return;
    };
    let db = TempDb::create(&admin).await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    for (mode, want) in [("disable", false), ("prefer", true)] {
        let store = Store::connect(&format!("{}{sep}sslmode={mode}", db.url), 1)
            .await
            .unwrap();
        let Store::Postgres(pool) = &store else {
            panic!("not PostgreSQL")
        };
        // Whether the server is set up for TLS decides what `prefer` gets.
        let server_tls: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(pool)
            .await
            .unwrap();
        let ours: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(ours, want && server_tls == "on", "sslmode={mode}");
        store.close().await;
    }
}
