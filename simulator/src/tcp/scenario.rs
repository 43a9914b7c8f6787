//! Scripted exchanges of one TCP device, printed line by line for installers and tests:
//! `sent <frame>` for every transmission, `ack <frame> after <ms> ms` for the ack, `recv
//! <frame>` for anything else the engine sends.
//!
//! A frame that expects an ack is retransmitted unchanged (same bytes, same serial) every
//! `retry_every` until acked, at most `retries` times, as real devices do. If the engine
//! drops the connection meanwhile, the device reconnects, logs in again and carries on
//! retransmitting.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};

use super::{Device, Expect, Family, Match, Outgoing, Reply};

/// How long to wait for the TCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A named script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TcpScenario {
    /// Log in, send one SOS alarm and retransmit it until acked.
    Sos,
    /// Log in and send vital signs (watch, trv); a heartbeat for gt06 and jt808.
    Vitals,
    /// Log in and send one keep-alive.
    Keepalive,
}

/// Settings of a scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioArgs {
    /// Device family.
    pub family: Family,
    /// Engine listener, `host:port`.
    pub addr: String,
    /// Device id (checked with [`Family::check_device_id`]).
    pub device: String,
    /// Time to wait for an ack before retransmitting.
    pub retry_every: Duration,
    /// Retransmissions after the first transmission.
    pub retries: u32,
}

/// One TCP connection of the device and the bytes received but not yet framed.
#[derive(Debug)]
struct Link {
    family: Family,
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// How waiting for an ack ended.
enum Wait {
    Acked(Reply),
    Refused,
    Timeout,
    Closed(String),
}

impl Link {
    async fn connect(&mut self) -> Result<()> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true).ok();
        match (stream.local_addr(), stream.peer_addr()) {
            (Ok(local), Ok(peer)) => println!("connected {local} -> {peer}"),
            _ => println!("connected to {}", self.addr),
        }
        self.buf.clear();
        self.stream = Some(stream);
        Ok(())
    }

    /// Sends `out` and prints it; `Err` with the reason when the connection is gone.
    async fn send(&mut self, out: &Outgoing, note: &str) -> Result<(), String> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        stream
            .write_all(&out.bytes)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        println!("sent {}{note}", self.family.show(&out.bytes));
        Ok(())
    }

    /// Prints everything received until `expect` is met or `until`; `sent_at` times the ack.
    async fn wait_for(
        &mut self,
        expect: Expect,
        device: &str,
        sent_at: Instant,
        until: Instant,
    ) -> Wait {
        let mut chunk = [0u8; 1024];
        loop {
            while let Some(frame) = self.family.split(&mut self.buf) {
                let reply = self.family.parse(&frame);
                let problem = reply
                    .problem()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default();
                let shown = self.family.show(&frame);
                match expect.check(&reply, device) {
                    Match::Acked => {
                        let ms = sent_at.elapsed().as_secs_f64() * 1000.0;
                        println!("ack {shown} after {ms:.1} ms{problem}");
                        return Wait::Acked(reply);
                    }
                    Match::Refused(why) => {
                        println!("refused {shown}: {why}");
                        return Wait::Refused;
                    }
                    Match::No => println!("recv {shown}{problem}"),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                return Wait::Closed("not connected".into());
            };
            tokio::select! {
                read = stream.read(&mut chunk) => match read {
                    Ok(0) => return Wait::Closed("closed by the engine".into()),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Wait::Closed(format!("read failed: {e}")),
                },
                _ = sleep_until(until) => return Wait::Timeout,
            }
        }
    }

    fn drop_connection(&mut self, why: &str) {
        println!("disconnected: {why}");
        self.stream = None;
        self.buf.clear();
    }
}

/// Sends `out` until acked (see the module doc); `Ok(Some(reply))` with the ack, `Ok(None)`
/// when it never came or was refused. With `reconnect`, a lost connection is re-established
/// and the device logs in again before the next retransmission.
async fn exchange(
    link: &mut Link,
    dev: &mut Device,
    out: &Outgoing,
    args: &ScenarioArgs,
    reconnect: bool,
) -> Result<Option<Reply>> {
    let Some(expect) = out.expect else {
        link.send(out, "")
            .await
            .map_err(|why| anyhow::anyhow!("sending {}: {why}", out.what))?;
        return Ok(None);
    };
    let first = Instant::now();
    let transmissions = args.retries + 1;
    for n in 1..=transmissions {
        let deadline = Instant::now() + args.retry_every;
        if link.stream.is_none() {
            if !reconnect {
                break;
            }
            if let Err(e) = link.connect().await {
                println!("connect failed: {e:#}");
                sleep_until(deadline).await;
                continue;
            }
            if !Box::pin(login(link, dev, args)).await? {
                link.drop_connection("login not acked");
                continue;
            }
        }
        let note = if n == 1 {
            String::new()
        } else {
            format!(" (retransmission {} of {})", n - 1, args.retries)
        };
        if let Err(why) = link.send(out, &note).await {
            link.drop_connection(&why);
            sleep_until(deadline).await;
            continue;
        }
        let sent_at = Instant::now();
        match link
            .wait_for(expect, dev.id(), sent_at, sent_at + args.retry_every)
            .await
        {
            Wait::Acked(reply) => {
                if n > 1 {
                    println!(
                        "{} acked after {n} transmissions, {:.1} ms after the first",
                        out.what,
                        first.elapsed().as_secs_f64() * 1000.0
                    );
                }
                return Ok(Some(reply));
            }
            Wait::Refused => return Ok(None),
            Wait::Timeout => {}
            Wait::Closed(why) => {
                link.drop_connection(&why);
                if !reconnect {
                    break;
                }
                sleep_until(sent_at + args.retry_every).await;
            }
        }
    }
    println!(
        "no ack for {} after {transmissions} transmission(s) over {:.1} s",
        out.what,
        first.elapsed().as_secs_f64()
    );
    Ok(None)
}

/// Logs in on the current connection (jt808: register, then authenticate with the code);
/// `false` when a step was not acked.
async fn login(link: &mut Link, dev: &mut Device, args: &ScenarioArgs) -> Result<bool> {
    let mut step = dev.login();
    loop {
        let Some(reply) = exchange(link, dev, &step, args, false).await? else {
            return Ok(false);
        };
        match dev.after_ack(&step, &reply) {
            Some(next) => step = next,
            None => return Ok(true),
        }
    }
}

/// Plays `scenario`; `Ok(true)` when every frame that expects an ack was acked.
pub async fn run(scenario: TcpScenario, args: &ScenarioArgs) -> Result<bool> {
    args.family
        .check_device_id(&args.device)
        .map_err(|e| anyhow::anyhow!("--device {:?}: {e}", args.device))?;
    let mut dev = Device::new(args.family, args.device.clone());
    let mut link = Link {
        family: args.family,
        addr: args.addr.clone(),
        stream: None,
        buf: Vec::new(),
    };
    link.connect().await?;
    if !login(&mut link, &mut dev, args).await? {
        println!("result: login failed");
        return Ok(false);
    }
    let frames = match scenario {
        TcpScenario::Sos => vec![dev.sos(Utc::now())],
        TcpScenario::Keepalive => vec![dev.keepalive()],
        TcpScenario::Vitals => {
            let mut frames = dev.vitals();
            match args.family {
                Family::Gt06 | Family::Jt808 => println!(
                    "note: {} carries no vital signs; sending a heartbeat",
                    args.family.name()
                ),
                // Health messages get no reply: a keep-alive after them shows that the
                // engine has read them (it handles a connection's frames in order).
                Family::Watch => frames.push(dev.keepalive()),
                Family::Trv => {}
            }
            frames
        }
    };
    let mut ok = true;
    for out in &frames {
        let acked = exchange(&mut link, &mut dev, out, args, true).await?;
        if out.expect.is_some() && acked.is_none() {
            ok = false;
            break;
        }
    }
    if let Some(mut stream) = link.stream.take() {
        stream.shutdown().await.ok();
    }
    println!("result: {}", if ok { "acked" } else { "not acked" });
    Ok(ok)
}
