//! `anxin-sim` run as a user runs it next to the engine: it finds the broker from the engine's
//! own `ANXIN_MQTT_URL` (and topic root), says where it publishes, and shows progress on a long
//! load run. Against a private Mosquitto on a free port.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Broker {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let dir =
            std::env::temp_dir().join(format!("anxin-sim-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
        // As root, Mosquitto would switch to its own user; nothing here needs that.
        if unsafe { libc::geteuid() } == 0 {
            text.push_str("user root\n");
        }
        std::fs::write(&conf, text).unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Broker { child, port, dir }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs anxin-sim with only the engine's variables set (none of the simulator's own).
fn sim(env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_anxin-sim"));
    cmd.args(args)
        .env_remove("ANXIN_SIM_MQTT_URL")
        .env_remove("ANXIN_MQTT_URL")
        .env_remove("ANXIN_MQTT_TOPIC_ROOT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running anxin-sim")
}

#[test]
fn without_url_the_simulator_publishes_to_the_engines_broker_and_says_so() {
    let broker = Broker::start();
    let out = sim(
        &[
            (
                "ANXIN_MQTT_URL",
                format!("embedded://127.0.0.1:{}", broker.port),
            ),
            ("ANXIN_MQTT_TOPIC_ROOT", "sim-env/v1".into()),
        ],
        &["scenario", "sos", "--device", "d1"],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "MQTT broker mqtt://127.0.0.1:{} (ANXIN_MQTT_URL), topics under sim-env/v1/devices/",
            broker.port
        )),
        "{stderr}"
    );
    // Printed only once the broker acked it.
    assert!(
        stdout.contains("published sim-env/v1/devices/d1/events"),
        "{stdout}"
    );
}

#[test]
fn an_engine_url_the_simulator_cannot_use_is_refused_with_the_reason() {
    let out = sim(
        &[("ANXIN_MQTT_URL", "mqtts://broker.example:8883".into())],
        &["scenario", "sos", "--device", "d1"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ANXIN_MQTT_URL") && stderr.contains("--url"),
        "{stderr}"
    );
}

#[test]
fn a_long_load_run_reports_progress() {
    let broker = Broker::start();
    // 300 messages at 100/s: about three seconds, so three progress lines at one a second.
    let out = sim(
        &[],
        &[
            "--url",
            &format!("mqtt://127.0.0.1:{}", broker.port),
            "load",
            "--devices",
            "3",
            "--rate",
            "100",
            "--count",
            "300",
            "--progress-secs",
            "1",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("progress "))
        .collect();
    assert!(!progress.is_empty(), "{stderr}");
    assert!(
        progress[0].contains(" s: sent ")
            && progress[0].contains(", acked ")
            && progress[0].contains("msg/s acked"),
        "{stderr}"
    );
    assert!(stdout.contains("(acked 300)"), "{stdout}");
}
