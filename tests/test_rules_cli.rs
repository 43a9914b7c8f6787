//! `anxin test-rules` from the outside (CONTRACT.md): which files it runs, the
//! `N passed, M failed` summary, exit 1 with located problems. The runner's comparisons are
//! tested against an in-memory world in `src/ruletest/runner.rs`.

use std::path::Path;
use std::process::{Command, Output};

const RULES: &str = "[[rule]]\nname = \"sos\"\nevent = \"sos\"\nseverity = \"critical\"\n";

/// `dir/config/rules.toml` and `dir/config/tests/<name>` with `test`.
fn project(dir: &Path, name: &str, test: &str) {
    std::fs::create_dir_all(dir.join("config/tests")).unwrap();
    std::fs::write(dir.join("config/rules.toml"), RULES).unwrap();
    std::fs::write(dir.join("config/tests").join(name), test).unwrap();
}

fn test_rules(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anxin"))
        .arg("test-rules")
        .args(args)
        .current_dir(cwd)
        .env_remove("ANXIN_MQTT_URL")
        .env_remove("ANXIN_STORE_URL")
        .output()
        .unwrap()
}

#[test]
fn without_arguments_it_runs_config_tests_and_a_malformed_file_fails_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    project(
        dir.path(),
        "sos.toml",
        "start = \"2026-03-02T08:00:00+08:00\"\n[[device]]\nid = \"p1\"\n\n[[case]]\nname = \"x\"\n\n[[case.step]]\nat = \"5m\"\nsend = { device = \"p1\", event = { type = \"sos\" } }\nno_alerts = true\n",
    );
    let out = test_rules(dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("config/tests/sos.toml:9: case[0].step[0].at: \"5m\" is not an offset"),
        "{stdout}"
    );
    assert!(stdout.ends_with("0 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn a_case_that_does_not_hold_exits_1_naming_the_file_and_case() {
    let dir = tempfile::tempdir().unwrap();
    // An SOS press never leaves the world without alerts.
    let test = "start = \"2026-03-02T08:00:00+08:00\"\n[[device]]\nid = \"p1\"\n\n[[case]]\nname = \"deliberately wrong\"\n\n[[case.step]]\nat = \"+0s\"\nsend = { device = \"p1\", event = { type = \"sos\" } }\nno_alerts = true\n";
    project(dir.path(), "wrong.toml", test);
    let out = test_rules(dir.path(), &["config/tests/wrong.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // The expectation's line, what was expected, and what happened instead.
    assert!(
        stdout.contains("config/tests/wrong.toml:11: case \"deliberately wrong\": at +0s: expected no alerts, found:")
            && stdout.contains("+ sos p1 open critical level 0 count 1, opened +0s"),
        "{stdout}"
    );
    assert!(stdout.ends_with("0 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn a_missing_test_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = test_rules(dir.path(), &["nowhere.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nowhere.toml: no such test file or directory"),
        "{stderr}"
    );
}
