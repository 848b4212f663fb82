//! Helpers for the broker tests: start the real `streamline` binary on a free
//! loopback port, stop it with SIGTERM or SIGKILL, and drive real clients (kcat,
//! confluent-kafka, KafkaJS). A missing client is a test failure, never a skip: run
//! `scripts/install-test-deps.sh` first.
#![allow(dead_code)]

pub mod wire;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running broker process.
pub struct Broker {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The arguments it was started with (for restarts).
    pub args: Vec<String>,
    /// `127.0.0.1:PORT` of its `/metrics` endpoint, when started with `--metrics-listen`.
    pub metrics: Option<String>,
    /// The open-file limit it was started with, if any (for restarts).
    open_files: Option<u64>,
    /// Environment variables it was started with (for restarts).
    env: Vec<(String, String)>,
    log: PathBuf,
}

/// Path of the broker binary built by cargo for these tests.
pub fn broker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_streamline")
}

impl Broker {
    /// Starts the broker on `127.0.0.1:0` with `data_dir` and `extra` flags; waits for
    /// its "listening on" line. Small WAL files keep the tests light.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        Self::start_limited(data_dir, extra, None)
    }

    /// Like [`Broker::start`], with the environment variables `env` set for the
    /// process (each `(name, value)`), and kept for restarts.
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let args = Self::args(data_dir, extra);
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Self::start_with(data_dir, args, None, env)
    }

    /// Like [`Broker::start`], with the process's open-file limit (soft and hard)
    /// set to `open_files` when given.
    pub fn start_limited(data_dir: &Path, extra: &[&str], open_files: Option<u64>) -> Broker {
        Self::start_with(
            data_dir,
            Self::args(data_dir, extra),
            open_files,
            Vec::new(),
        )
    }

    /// The command line for `data_dir` and `extra` flags.
    fn args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["--data-dir".into(), data_dir.display().to_string()];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !extra.contains(&"--wal-max-file-size") {
            args.extend(["--wal-max-file-size".into(), "1m".into()]);
        }
        // Groups form at once, as the tests' consumers join one at a time;
        // a test of the delay sets it.
        if !extra.contains(&"--group-initial-rebalance-delay-ms") {
            args.extend(["--group-initial-rebalance-delay-ms".into(), "0".into()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args
    }

    fn start_with(
        data_dir: &Path,
        args: Vec<String>,
        open_files: Option<u64>,
        env: Vec<(String, String)>,
    ) -> Broker {
        Self::try_start_with(data_dir, args, open_files, env)
            .unwrap_or_else(|log| panic!("broker did not start; log:\n{log}"))
    }

    /// Starts the broker; when it does not start, its log of this attempt.
    fn try_start_with(
        data_dir: &Path,
        args: Vec<String>,
        open_files: Option<u64>,
        env: Vec<(String, String)>,
    ) -> Result<Broker, String> {
        Self::spawn_with(data_dir, args, open_files, env).listening()
    }

    /// Starts the broker process without waiting for it to listen.
    fn spawn_with(
        data_dir: &Path,
        args: Vec<String>,
        open_files: Option<u64>,
        env: Vec<(String, String)>,
    ) -> Starting {
        let log = data_dir.with_extension("broker.log");
        // The log is appended to across restarts: this attempt's part starts here.
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open broker log");
        let mut cmd = Command::new(broker_bin());
        if let Some(n) = open_files {
            limit_open_files(&mut cmd, n);
        }
        let mut child = cmd
            .args(&args)
            .env(
                "STREAMLINE_LOG",
                std::env::var("TEST_BROKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn streamline");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Up to the "listening" line, which comes last; the metrics line before it.
            let mut start = Vec::new();
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                let last = line.starts_with("streamline listening on ");
                start.push(line);
                if last {
                    let _ = tx.send(start);
                    break;
                }
            }
            for _ in lines {}
        });
        Starting {
            child: Some(child),
            start: rx,
            data_dir: data_dir.to_path_buf(),
            args,
            open_files,
            env,
            log,
            log_start,
        }
    }

    /// Starts a new process with the same arguments, as [`Broker::restart`],
    /// without waiting for it to listen.
    pub fn relaunch(&self) -> Starting {
        assert!(self.child.is_none(), "stop the broker before restarting it");
        Self::spawn_with(
            &self.data_dir,
            self.args.clone(),
            self.open_files,
            self.env.clone(),
        )
    }

    /// Starts a new process with the same arguments (a new port, unless they
    /// name one).
    pub fn restart(&self) -> Broker {
        self.relaunch()
            .listening()
            .unwrap_or_else(|log| panic!("broker did not start; log:\n{log}"))
    }

    /// Starts the broker listening on a fixed `127.0.0.1` port that it keeps
    /// across [`Broker::restart_same_port`]: one outside the kernel's ephemeral
    /// range, which no `bind` to port 0 or outgoing connection (of a parallel
    /// test, say) is handed. A port found in use is replaced by another.
    pub fn start_fixed_port(data_dir: &Path, extra: &[&str]) -> Broker {
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| {
                let mut n = r.split_whitespace().map(|n| n.parse::<u16>().ok());
                Some((n.next()??, n.next()??))
            })
            .unwrap_or((32768, 60999));
        let ports: Vec<u16> = (20000..30000).filter(|p| !(lo..=hi).contains(p)).collect();
        assert!(
            !ports.is_empty(),
            "no port in 20000..30000 outside the ephemeral range {lo}-{hi}"
        );
        let mut x = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
        let mut last = String::new();
        for _ in 0..20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = ports[(x % ports.len() as u64) as usize];
            let listen = format!("127.0.0.1:{port}");
            let mut args: Vec<&str> = vec!["--listen", &listen];
            args.extend(extra);
            match Self::try_start_with(data_dir, Self::args(data_dir, &args), None, Vec::new()) {
                Ok(b) => return b,
                Err(log) if address_in_use(&log) => last = log,
                Err(log) => panic!("broker did not start; log:\n{log}"),
            }
        }
        panic!("every port tried was in use; last log:\n{last}")
    }

    /// [`Broker::restart`] on the same address. Should something hold the port
    /// for a moment (the killed process's socket not yet gone, say), the start is
    /// retried for up to 10 s.
    pub fn restart_same_port(&self) -> Broker {
        assert!(self.child.is_none(), "stop the broker before restarting it");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::try_start_with(
                &self.data_dir,
                self.args.clone(),
                self.open_files,
                self.env.clone(),
            ) {
                Ok(b) => {
                    assert_eq!(b.addr, self.addr, "restarted on another address");
                    return b;
                }
                Err(log) if address_in_use(&log) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => panic!("broker did not restart on {}; log:\n{log}", self.addr),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends the signal named `sig` (`TERM`, `INT`) and waits (up to 30 s) for the exit status.
    pub fn stop_with(&mut self, sig: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), sig);
        wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "broker did not exit within 30 s of SIG{sig}; log:\n{}",
                self.log_text()
            )
        })
    }

    /// SIGKILLs the broker (no chance to flush anything) and reaps it. The
    /// broker must still have been running, and must have died of the signal:
    /// one that had exited by itself (a panic mid-test) fails the test rather
    /// than pass as killed.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "broker exited by itself ({status:?}) before the kill; log:\n{}",
                self.log_text()
            );
        }
        signal(child.id(), "KILL");
        let status = child.wait().expect("reap the broker");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "broker exited ({status:?}) before the kill took it; log:\n{}",
            self.log_text()
        );
    }

    /// Panics unless the broker is still running: one that exited by itself
    /// (a panic mid-test) fails the test rather than pass as cut or killed.
    pub fn assert_running(&mut self) {
        let status = self.child.as_mut().expect("running").try_wait();
        if let Ok(Some(status)) = status {
            panic!(
                "broker exited by itself ({status:?}); log:\n{}",
                self.log_text()
            );
        }
    }

    /// As [`Broker::kill9`], for a broker that may have stopped by itself
    /// once its writes failed under a power cut: reaps it however it ended.
    /// An end by itself passes only when the log shows a failing write (an
    /// I/O error, or a file system gone read-only).
    pub fn kill9_or_reap(&mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "KILL");
        let status = child.wait().expect("reap the broker");
        if std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGKILL) {
            let log = self.log_text();
            assert!(
                ["os error 5)", "os error 30)", "Input/output error"]
                    .iter()
                    .any(|e| log.contains(e)),
                "broker exited ({status:?}) before the kill, not of a failing write; log:\n{log}"
            );
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    /// Stops the broker as an operator would (SIGTERM), so that every test also
    /// ends with a graceful shutdown (and an instrumented build writes its
    /// coverage profile); SIGKILL if it has not exited within 10 s. A broker
    /// that exited by itself before, or whose shutdown fails or takes longer,
    /// fails the test (one stopped or killed by the test is not looked at).
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let mut exited_by_itself = None;
            match c.try_wait() {
                Ok(None) => {
                    let _ = Command::new("kill")
                        .args(["-s", "TERM", &c.id().to_string()])
                        .status();
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
                Ok(Some(status)) => exited_by_itself = Some(status),
                Err(_) => {}
            }
            let stopped = c.try_wait().ok().flatten();
            let _ = c.kill();
            let _ = c.wait();
            // A shutdown that fails, panics or hangs fails the test that
            // ended with it (unless the test is failing already).
            if !std::thread::panicking() {
                if let Some(status) = exited_by_itself {
                    panic!(
                        "the broker exited by itself ({status:?}) before the test ended; log:\n{}",
                        self.log_text()
                    );
                }
                match stopped {
                    Some(status) if status.success() => {}
                    Some(status) => panic!(
                        "the broker's shutdown at the end of the test exited {status:?}; log:\n{}",
                        self.log_text()
                    ),
                    None => panic!(
                        "the broker did not exit within 10 s of SIGTERM at the end of the test; log:\n{}",
                        self.log_text()
                    ),
                }
            }
        }
    }
}

/// Sets the open-file limit (soft and hard) of the process `cmd` starts to `n`.
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // rlim_t is u64 on Linux, i64 on the BSDs.
    #[allow(clippy::useless_conversion, reason = "identity where rlim_t is u64")]
    let n = libc::rlim_t::try_from(n).expect("open-file limit fits rlim_t");
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit is async-signal-safe and reads only `limit`, a copy
    // owned by the closure; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A broker process started and not yet listening ([`Broker::relaunch`]); it
/// is killed if dropped so.
pub struct Starting {
    child: Option<Child>,
    /// The lines it printed, up to the "listening" one, once it printed that.
    start: mpsc::Receiver<Vec<String>>,
    data_dir: PathBuf,
    args: Vec<String>,
    open_files: Option<u64>,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Where this start's part of the log begins.
    log_start: usize,
}

impl Starting {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(
            self.child.as_mut().expect("not waited for").try_wait(),
            Ok(None)
        )
    }

    /// This start's part of the broker's log so far.
    pub fn log_text(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&text[self.log_start.min(text.len())..]).into_owned()
    }

    /// Waits (up to 30 s) for its "listening" line; when it does not come, the
    /// process is killed and this start's log returned.
    pub fn listening(mut self) -> Result<Broker, String> {
        let mut child = self.child.take().expect("running");
        let start = match self.start.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.log_text());
            }
        };
        let line = start.last().expect("the listening line").clone();
        let metrics = start.iter().find_map(|l| {
            let url = l.strip_prefix("streamline metrics on http://")?;
            Some(url.strip_suffix("/metrics")?.to_string())
        });
        let addr = line
            .rsplit(' ')
            .next()
            .expect("address on the line")
            .to_string();
        // A broker listening on every interface is reached on the loopback address.
        let addr = match addr.strip_prefix("0.0.0.0:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => addr,
        };
        assert!(
            addr.starts_with("127.0.0.1:"),
            "unexpected start line {line:?}"
        );
        if let Err(e) = self.check_backend() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{e}");
        }
        Ok(Broker {
            child: Some(child),
            addr,
            data_dir: std::mem::take(&mut self.data_dir),
            args: std::mem::take(&mut self.args),
            metrics,
            open_files: self.open_files,
            env: std::mem::take(&mut self.env),
            log: std::mem::take(&mut self.log),
        })
    }

    /// The WAL backend in use is the one asked for: `--wal-backend`, else
    /// `STREAMLINE_WAL_BACKEND` (the test's, else this process's, as
    /// `scripts/test.sh` sets it for its std pass), else io_uring (`auto`). A
    /// broker suite whose io_uring run had quietly fallen back to std would
    /// otherwise pass having tested std twice. (No check when the log level
    /// leaves out the "opened WAL" line, or the WAL is disabled.)
    fn check_backend(&self) -> Result<(), String> {
        let log = self.log_text();
        let Some(line) = log.lines().rfind(|l| l.contains("opened WAL")) else {
            return Ok(());
        };
        let Some(used) = line.split(' ').find_map(|w| w.strip_prefix("backend=")) else {
            return Ok(());
        };
        let flag = self
            .args
            .iter()
            .position(|a| a == "--wal-backend")
            .and_then(|i| self.args.get(i + 1).cloned());
        let var = || {
            self.env
                .iter()
                .find(|(k, _)| k == "STREAMLINE_WAL_BACKEND")
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var("STREAMLINE_WAL_BACKEND").ok())
        };
        let asked = flag.or_else(var).unwrap_or_else(|| "auto".into());
        let wanted = if asked == "auto" {
            "uring"
        } else {
            asked.as_str()
        };
        if used == wanted {
            Ok(())
        } else {
            Err(format!(
                "the broker opened its WAL with backend {used}, asked for {asked}; log:\n{log}"
            ))
        }
    }

    /// Waits (up to 30 s) for the process to exit; its status, and whether it
    /// printed its "listening" line.
    pub fn exit(mut self) -> (ExitStatus, bool) {
        let mut child = self.child.take().expect("running");
        let status = wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("broker did not exit within 30 s; log:\n{}", self.log_text())
        });
        (
            status,
            self.start.recv_timeout(Duration::from_secs(10)).is_ok(),
        )
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a broker's log says its listening address was in use.
fn address_in_use(log: &str) -> bool {
    log.contains(&format!("(os error {})", libc::EADDRINUSE))
}

/// The peak resident memory of process `pid` so far, in bytes (`VmHWM` in
/// `/proc/PID/status`; Linux).
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// Sends the signal named `sig` (`TERM`, `KILL`) to the process `pid`, one we started.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {sig} {pid} failed");
}

/// Waits for a child up to `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Panics (fails the test) when `tool` is not on PATH.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is not installed: run scripts/install-test-deps.sh (the broker tests need real clients)");
}

/// The Python interpreter that has confluent-kafka; fails the test when there is none.
pub fn python() -> String {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import confluent_kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{py} with confluent-kafka is not available: run scripts/install-test-deps.sh"
    );
    py
}

/// Runs a command with `stdin` bytes and a time limit; returns its output.
pub fn run(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, limit) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// kcat with a time limit; asserts it succeeded.
pub fn kcat(args: &[&str], stdin: &[u8]) -> Output {
    require_tool("kcat");
    let out = run(
        Command::new("kcat").args(args),
        stdin,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Partition `partition` of `topic` read with kcat from its log start (every
/// partition when `None`): (offset, value) in the order kcat prints them.
pub fn kcat_from_start(addr: &str, topic: &str, partition: Option<i32>) -> Vec<(i64, String)> {
    let p = partition.map(|p| p.to_string());
    let mut args = vec!["-b", addr, "-C", "-t", topic];
    if let Some(p) = &p {
        args.extend(["-p", p]);
    }
    args.extend(["-o", "beginning", "-e", "-q", "-f", "%o %s\n"]);
    let out = kcat(&args, b"");
    String::from_utf8(out.stdout)
        .expect("utf-8 values")
        .lines()
        .map(|l| {
            let (o, v) = l.split_once(' ').expect("offset and value");
            (o.parse().expect("offset"), v.to_string())
        })
        .collect()
}

/// Path of a client script in tests/clients/.
pub fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
        .join(name)
}

/// Runs a Python client script; asserts it succeeded and returns its stdout.
pub fn python_client(script: &str, args: &[&str]) -> String {
    python_client_env(script, args, &[])
}

/// [`python_client`] with environment variables set for the script.
pub fn python_client_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let py = python();
    client_output(
        Command::new(py)
            .arg(client_script(script))
            .args(args)
            .envs(env.iter().copied()),
        &format!("{script} {args:?}"),
    )
}

/// Runs a client for up to 2 minutes; asserts it succeeded and returns its stdout.
fn client_output(cmd: &mut Command, what: &str) -> String {
    let out = run(cmd, b"", Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tests/clients/kafkajs_client.js` with node and KafkaJS (installed by
/// scripts/install-test-deps.sh); asserts it succeeded and returns its stdout.
pub fn kafkajs_client(args: &[&str]) -> String {
    kafkajs_client_env(args, &[])
}

/// [`kafkajs_client`] with environment variables set for the script.
pub fn kafkajs_client_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let kafkajs = client_script("node").join("node_modules").join("kafkajs");
    assert!(
        kafkajs.is_dir(),
        "KafkaJS is not installed in {}: run scripts/install-test-deps.sh",
        kafkajs.display()
    );
    require_tool("node");
    client_output(
        Command::new("node")
            .arg(client_script("kafkajs_client.js"))
            .args(args)
            .envs(env.iter().copied()),
        &format!("kafkajs_client.js {args:?}"),
    )
}

/// The fields after `tag` of every line that starts with it.
pub fn tagged<'a>(text: &'a str, tag: &str) -> Vec<Vec<&'a str>> {
    text.lines()
        .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' '))
        .map(|rest| rest.split(' ').collect())
        .collect()
}

/// `(partition, offset, value)` from lines `"{tag} p offset value"` of a client's output.
pub fn records(text: &str, tag: &str) -> Vec<(i32, i64, String)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(tag)?.strip_prefix(' ')?;
            let mut it = rest.splitn(3, ' ');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// Sends `request` to `addr` and returns the status code and the body.
/// A connection closed unanswered (the endpoint serves a bounded number at
/// once) is tried again, for up to 10 s.
pub fn http(addr: &str, request: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut text = String::new();
        let sent = s
            .write_all(request.as_bytes())
            .and_then(|()| s.read_to_string(&mut text));
        if let (Ok(_), Some((head, body))) = (sent, text.split_once("\r\n\r\n")) {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, body.to_string());
        }
        assert!(Instant::now() < deadline, "no answer from {addr}: {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The broker's metrics page as served (it must run with `--metrics-listen`).
pub fn metrics_page(broker: &Broker) -> String {
    let addr = broker
        .metrics
        .as_deref()
        .expect("started with --metrics-listen");
    let (status, page) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{page}");
    page
}

/// Scrapes the broker, parses the page with `prometheus_client`, and returns
/// every sample as `name{labels}` (labels sorted) → value.
pub fn scrape(broker: &Broker) -> BTreeMap<String, f64> {
    let page = metrics_page(broker);
    let out = run(
        Command::new(python()).arg(client_script("parse_metrics.py")),
        page.as_bytes(),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "prometheus_client refused the page: {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

pub fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

/// `streamline_fetch_reads_total` now, read from the page as it is (no parse:
/// cheap enough to poll). The broker must run with `--metrics-listen`.
pub fn fetch_reads(broker: &Broker) -> u64 {
    let page = metrics_page(broker);
    page.lines()
        .find_map(|l| l.strip_prefix("streamline_fetch_reads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no streamline_fetch_reads_total in {page}"))
}

/// Waits until a Fetch sent after [`fetch_reads`] gave `before` has had its
/// first read pass counted, then 200 ms for that pass (of partitions holding
/// nothing from its offsets) to end and the long poll to wait: an event made
/// then meets a waiting long poll. A sleep alone let a Fetch read late meet the
/// event's result at its first read, and pass with long polls broken.
pub fn await_long_poll(broker: &Broker, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while fetch_reads(broker) <= before {
        assert!(Instant::now() < deadline, "the Fetch was never read");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// Starts the broker with `args` on `data` and asserts it refuses to start:
/// exit code 2, a message naming `names`, and nothing created on disk.
pub fn assert_refused_at_start(data: &Path, args: &[&str], names: &str) {
    assert_refused_at_start_env(data, args, &[], names);
}

/// A FIFO and a link to `/dev/zero` in `dir` (`stem.fifo`, `stem.zero`):
/// files given by path as configuration must be refused, not waited for or
/// read without end.
#[cfg(unix)]
pub fn special_files(dir: &Path, stem: &str) -> [std::path::PathBuf; 2] {
    let fifo = dir.join(format!("{stem}.fifo"));
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let zero = dir.join(format!("{stem}.zero"));
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    [fifo, zero]
}

/// [`assert_refused_at_start`] with the environment variables `env` set.
pub fn assert_refused_at_start_env(data: &Path, args: &[&str], env: &[(&str, &str)], names: &str) {
    let out = run(
        Command::new(broker_bin())
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied()),
        b"",
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(names), "{args:?}: must name {names}: {err}");
    assert!(!data.exists(), "{args:?}: nothing may be created on disk");
}
