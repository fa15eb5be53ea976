//! Child processes for multi-process tests: the test binary run again on its `child_process`
//! test, with `LIVEDICT_CHILD` naming the role and further variables as the test chooses. A child
//! reports through lines starting with `CHILD:` on its standard output.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

/// Starts this test binary again as a child playing `role`, with `env` set.
pub fn spawn(role: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LIVEDICT_CHILD", role)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.spawn().unwrap()
}

/// The `CHILD:` lines a finished child printed; panics if it failed.
pub fn lines(child: Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("CHILD:").map(|(_, rest)| rest.to_owned()))
        .collect()
}
