//! Command hooks: an external program run per event, the sandbox for code the application does not
//! trust.
//!
//! The program gets the event as one JSON document on its standard input
//! ([`Event::to_json`]). It runs in its own process group, under address-space and CPU-time limits
//! (set by `/bin/sh`'s `ulimit` before it `exec`s the program), with an empty environment apart
//! from `PATH` unless told otherwise, and is killed with its whole process group when its timeout
//! passes. A non-zero exit status is a hook failure.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Event;
use crate::error::BoxError;

const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// An external program to run per event. Register it with [`Hook::command`](crate::Hook::command).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{CommandHook, EventKind, Hook, LiveDict};
///
/// let store = LiveDict::new();
/// let audit = CommandHook::new("/bin/sh")
///     .arg("-c")
///     .arg("cat >> /dev/null")            // reads the event JSON from stdin
///     .timeout(Duration::from_secs(2))
///     .memory_limit(256 << 20)
///     .cpu_limit(Duration::from_secs(1));
/// store.hook(Hook::command(EventKind::Delete, audit))?;
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct CommandHook {
    program: OsString,
    args: Vec<OsString>,
    pub(crate) timeout: Duration,
    memory_limit: Option<u64>,
    cpu_limit: Option<Duration>,
    env: Vec<(OsString, OsString)>,
    inherit_env: bool,
}

impl CommandHook {
    /// Runs `program` (a path, or a name looked up in `/usr/local/bin:/usr/bin:/bin`). Defaults:
    /// 5 s timeout, 512 MiB of address space, 2 s of CPU, no inherited environment.
    pub fn new(program: impl Into<OsString>) -> Self {
        CommandHook {
            program: program.into(),
            args: Vec::new(),
            timeout: Duration::from_secs(5),
            memory_limit: Some(512 << 20),
            cpu_limit: Some(Duration::from_secs(2)),
            env: Vec::new(),
            inherit_env: false,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Wall-clock time after which the program and its process group are killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Address-space limit in bytes (`RLIMIT_AS`); `None` for no limit.
    pub fn memory_limit(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.memory_limit = bytes.into();
        self
    }

    /// CPU-time limit (`RLIMIT_CPU`, whole seconds, at least 1); `None` for no limit.
    pub fn cpu_limit(mut self, cpu: impl Into<Option<Duration>>) -> Self {
        self.cpu_limit = cpu.into();
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Passes this process's whole environment (secrets included) to the program. Off by default.
    pub fn inherit_env(mut self, inherit: bool) -> Self {
        self.inherit_env = inherit;
        self
    }

    fn command(&self) -> Command {
        let mut script = String::new();
        if let Some(bytes) = self.memory_limit {
            script.push_str(&format!(
                "ulimit -v {} || exit 125; ",
                (bytes / 1024).max(1)
            ));
        }
        if let Some(cpu) = self.cpu_limit {
            script.push_str(&format!("ulimit -t {} || exit 125; ", cpu.as_secs().max(1)));
        }
        script.push_str("exec \"$0\" \"$@\"");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg(&self.program)
            .args(&self.args);
        if !self.inherit_env {
            cmd.env_clear().env("PATH", SAFE_PATH);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    /// Runs the program for `event`: Ok if it exits with status 0 within its timeout.
    pub(crate) fn run(&self, event: &Event) -> Result<(), BoxError> {
        let input = serde_json::to_vec(&event.to_json())?;
        let mut child = self.command().spawn()?;
        let pid = rustix::process::Pid::from_child(&child);
        let started = Instant::now();
        // Feed stdin from another thread, so a program that does not read cannot block us.
        let stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                // A program that exits without reading closes the pipe: not an error.
                let _ = stdin.write_all(&input);
            }
        });
        let mut pause = Duration::from_millis(1);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() >= self.timeout {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                let _ = child.kill();
                let _ = child.wait();
                let _ = writer.join();
                return Err(format!(
                    "command hook {:?} killed after its {:?} timeout",
                    self.program, self.timeout
                )
                .into());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        let _ = writer.join();
        if status.success() {
            Ok(())
        } else {
            Err(format!("command hook {:?} failed: {status}", self.program).into())
        }
    }
}
