//! The one door through which rampart runs other programs.
//! Owns: pinned environment, stdin from /dev/null, error messages that show the
//! command shell-quoted with its exit status and stderr tail, and what a
//! signal does to the waits (`stop_on_signals`). Nothing else in the crate may
//! spawn a process.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use anyhow::{anyhow, bail, Context, Result};

/// Where to point users when a host tool is missing.
pub const INSTALL_HINT: &str = "run scripts/install-host-tools as root";

/// Set by SIGINT, SIGTERM or SIGHUP once `stop_on_signals` has run.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// From now on SIGINT, SIGTERM and SIGHUP do not end rampart outright: they
/// make every wait of this module (timed commands, dialogues, `pause`) end
/// early and `check_interrupted` fail, so the caller's destructors shut down
/// what it started (virtual machines, test networks, work directories). A
/// second signal ends rampart at once (exit status 130); its children still
/// die with it (PR_SET_PDEATHSIG).
pub fn stop_on_signals() -> Result<()> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    REGISTERED.call_once(|| {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // The exit is registered first, so the first signal only raises the flag.
            let registered = signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&INTERRUPTED))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED)));
            if let Err(error) = registered {
                result = Err(anyhow!(error).context("while installing the signal handlers"));
                return;
            }
        }
    });
    result
}

/// Whether a signal asked rampart to stop (after `stop_on_signals`).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once a signal asked rampart to stop.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Sleeps for `duration`, or less if a signal asks rampart to stop.
pub fn pause(duration: std::time::Duration) {
    let deadline = std::time::Instant::now() + duration;
    while !interrupted() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
    }
}

/// A command to run, with a pinned environment.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: String,
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    cwd: Option<PathBuf>,
    /// Run in a fresh, empty network namespace and a private mount namespace
    /// (`unshare --net --mount`): no network, and no mount outlives it.
    no_network: bool,
    /// Bytes fed to the command's stdin (secrets go here, never into argv).
    /// Not shown by `display` or `Debug`.
    stdin: Option<StdinBytes>,
}

/// Stdin bytes whose `Debug` shows only their length: they may be secrets.
#[derive(Clone)]
struct StdinBytes(Vec<u8>);

impl std::fmt::Debug for StdinBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// What a captured command printed.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Cmd {
    pub fn new(program: &str) -> Cmd {
        Cmd { program: program.to_string(), args: Vec::new(), env: Vec::new(), cwd: None, no_network: false, stdin: None }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Cmd {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cmd {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Feeds `bytes` to the command's stdin instead of /dev/null.
    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Cmd {
        self.stdin = Some(StdinBytes(bytes));
        self
    }

    /// Cut the command off from every network: it runs in its own network
    /// namespace that holds only a loopback device, and in its own mount
    /// namespace, so mounts it makes vanish with it even if it is killed.
    pub fn without_network(mut self) -> Cmd {
        self.no_network = true;
        self
    }

    /// The command as a user could paste it into a shell.
    pub fn display(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        if self.no_network {
            words.extend(["unshare", "--net", "--mount", "--propagation", "private", "--"].map(String::from));
        }
        words.push(self.program.clone());
        words.extend(self.args.iter().map(|a| a.to_string_lossy().into_owned()));
        shell_words::join(words)
    }

    fn command(&self) -> Command {
        let mut command = if self.no_network {
            let mut c = Command::new("unshare");
            c.args(["--net", "--mount", "--propagation", "private", "--"]).arg(&self.program);
            c
        } else {
            Command::new(&self.program)
        };
        command.args(&self.args);
        command.env_clear();
        command.env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        command.env("LANG", "C.UTF-8");
        command.env("LC_ALL", "C.UTF-8");
        command.env("TZ", "UTC");
        command.env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
        if let Some(term) = std::env::var_os("TERM") {
            command.env("TERM", term);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        command.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // Every child dies with rampart: no tool outlives a killed run.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    fn not_found(&self, error: std::io::Error) -> anyhow::Error {
        let program = if self.no_network { "unshare" } else { &self.program };
        if error.kind() == std::io::ErrorKind::NotFound {
            anyhow!("{program} is not installed; {INSTALL_HINT}")
        } else {
            anyhow!(error).context(format!("could not start `{}`", self.display()))
        }
    }

    /// Runs a short command, capturing its output. Fails on non-zero exit.
    pub fn run(&self) -> Result<Output> {
        let output = self.run_unchecked()?;
        if !output.status.success() {
            bail!(failure_message(&self.display(), output.status, &output.stderr));
        }
        Ok(output)
    }

    /// Runs a short command, capturing its output, whatever its exit status.
    /// A signal that asks rampart to stop kills it and all it started.
    pub fn run_unchecked(&self) -> Result<Output> {
        let _timing = Timing::start(self);
        let output = self.run_captured(None, Stop::Tree)?;
        Ok(output.expect("no deadline: the command ran to its end"))
    }

    /// Runs the command with both pipes read on their own threads (a chatty
    /// child cannot block), until it ends, the deadline passes (`None`: it
    /// is killed with what it started) or a signal asks rampart to stop (it
    /// is killed likewise, and this fails).
    fn run_captured(&self, deadline: Option<std::time::Instant>, stop: Stop) -> Result<Option<Output>> {
        let mut command = self.command();
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stop == Stop::Group {
            command.process_group(0);
        }
        let tag = CommandTag::next();
        command.env(CommandTag::VARIABLE, &tag.0);
        let mut child = command.spawn().map_err(|e| self.not_found(e))?;
        let writer = self.feed_stdin(&mut child);
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let out_thread = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = stdout.read_to_end(&mut buffer);
            buffer
        });
        let err_thread = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = stderr.read_to_end(&mut buffer);
            buffer
        });
        let status = wait_stoppable(&mut child, &tag, deadline, stop)?;
        if status.is_none() {
            check_interrupted().with_context(|| format!("while running `{}`", self.display()))?;
        }
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        let stdout = out_thread.join().unwrap_or_default();
        let stderr = err_thread.join().unwrap_or_default();
        Ok(status.map(|status| Output { stdout, stderr, status }))
    }

    /// Writes the stdin bytes on their own thread (a child that does not read
    /// them all must not block us); closes stdin when done.
    fn feed_stdin(&self, child: &mut Child) -> Option<std::thread::JoinHandle<()>> {
        let mut pipe = child.stdin.take()?;
        let bytes = self.stdin.clone().map(|b| b.0).unwrap_or_default();
        Some(std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&bytes);
        }))
    }

    /// Starts the command with stdin and stdout as pipes, for a dialogue
    /// (answering prompts). stderr goes with stdout. Killed on drop.
    pub fn spawn_dialogue(&self) -> Result<Dialogue> {
        let mut command = self.command();
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.process_group(0);
        let mut child = command.spawn().map_err(|e| self.not_found(e))?;
        let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
        for mut pipe in [Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>, Box::new(child.stderr.take().expect("piped"))] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buffer) {
                    if n == 0 || sender.send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Dialogue { child, stdin, received: receiver, transcript: Vec::new() })
    }

    /// Runs a short command with a time limit, capturing its output. Returns
    /// `None` if it did not finish in time (it is killed then, with what it
    /// started: a grandchild holding the pipes open would otherwise hang us).
    pub fn run_with_timeout(&self, timeout: std::time::Duration) -> Result<Option<Output>> {
        let output = self.run_captured(Some(std::time::Instant::now() + timeout), Stop::Group)?;
        check_interrupted().with_context(|| format!("while running `{}`", self.display()))?;
        Ok(output)
    }

    /// Runs a long command with stdout and stderr appended to `log`.
    /// On failure the error carries the tail of the log.
    pub fn run_logged(&self, log: &Path) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("while opening log {}", log.display()))?;
        let _timing = Timing::start(self);
        let start = file.seek(SeekFrom::End(0))?;
        let mut command = self.command();
        command.stdout(file.try_clone()?).stderr(file.try_clone()?);
        let tag = CommandTag::next();
        command.env(CommandTag::VARIABLE, &tag.0);
        let mut child = command.spawn().map_err(|e| self.not_found(e))?;
        let writer = self.feed_stdin(&mut child);
        let Some(status) = wait_stoppable(&mut child, &tag, None, Stop::Tree)? else {
            bail!("interrupted by a signal while running `{}`", self.display());
        };
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        if !status.success() {
            let mut tail = Vec::new();
            let mut reader = File::open(log)?;
            reader.seek(SeekFrom::Start(start))?;
            reader.read_to_end(&mut tail)?;
            bail!(
                "{}\n(full log: {})",
                failure_message(&self.display(), status, &tail),
                log.display()
            );
        }
        Ok(())
    }

    /// Starts a long-running command in the background. Its output goes to
    /// `log`; it is killed when the returned guard drops and, through
    /// PR_SET_PDEATHSIG, when rampart itself dies.
    pub fn spawn_background(&self, log: &Path) -> Result<Background> {
        let file = File::create(log).with_context(|| format!("while creating log {}", log.display()))?;
        let mut command = self.command();
        command.stdout(file.try_clone()?).stderr(file);
        let mut child = command.spawn().map_err(|e| self.not_found(e))?;
        let _writer = self.feed_stdin(&mut child);
        Ok(Background { child: Some(child), display: self.display() })
    }
}

/// How a command is stopped early, with everything it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// It leads a process group of its own: the group is killed (timed
    /// commands, whose grandchildren may hold the pipes open).
    Group,
    /// It stays in rampart's process group, so whoever kills that group
    /// (a terminal's Ctrl-C, a CI timeout) reaches all it started; rampart
    /// kills its tree of descendants itself.
    Tree,
}

/// A mark in the environment of one command, which whatever it starts
/// inherits: found even in processes that left its tree (orphans whose
/// parent exited before the signal came).
struct CommandTag(String);

impl CommandTag {
    const VARIABLE: &'static str = "RAMPART_COMMAND";

    fn next() -> CommandTag {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        CommandTag(format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)))
    }

    /// The running processes whose environment carries this tag.
    fn carriers(&self) -> Vec<u32> {
        let wanted = format!("{}={}", Self::VARIABLE, self.0).into_bytes();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_slice())))
            .collect()
    }
}

/// Waits for a child. At the deadline, or when a signal asks rampart to stop
/// while it runs, kills it and all it started and returns `None`. A command
/// started after the signal (a destructor's clean-up) runs to its end. A
/// short command is polled often at first, so it costs no more than a
/// blocking wait.
fn wait_stoppable(child: &mut Child, tag: &CommandTag, deadline: Option<std::time::Instant>, stop: Stop) -> Result<Option<ExitStatus>> {
    let stoppable = stop == Stop::Group || !interrupted();
    let mut poll = std::time::Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) || (stoppable && interrupted()) {
            match stop {
                Stop::Group => kill_group(child),
                Stop::Tree => kill_tree(child, tag),
            }
            return Ok(None);
        }
        std::thread::sleep(poll);
        poll = (poll * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Kills the process group `child` leads and reaps the child; returns once
/// no process of the group is left (or after 10 s, when one is stuck in
/// the kernel).
fn kill_group(child: &mut Child) {
    let group = child.id() as i32;
    // SAFETY: kill(2) on the process group this child leads.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Members that outlive the leader keep the group; signal 0 tells.
    // SAFETY: as above.
    while unsafe { libc::kill(-group, 0) } == 0 && std::time::Instant::now() < deadline {
        // SAFETY: as above.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Kills `child` and every process below it or carrying its tag (orphans
/// that left the tree): each is stopped first, so none can fork past the
/// list, then all are killed at once. From here on rampart is the subreaper
/// of what it started: the killed processes whose parents die with them
/// become its children and are reaped here (init may not reap them: in a
/// container it often does not), within 10 s.
fn kill_tree(child: &mut Child, tag: &CommandTag) {
    // SAFETY: prctl(2) with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let root = child.id();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(root as i32, libc::SIGSTOP) };
    let mut tree = vec![root];
    loop {
        let mut below: Vec<u32> = descendants(&tree).into_iter().chain(tag.carriers()).filter(|p| !tree.contains(p)).collect();
        below.sort_unstable();
        below.dedup();
        if below.is_empty() {
            break;
        }
        for pid in &below {
            // SAFETY: kill(2) on a process below our own child.
            unsafe { libc::kill(*pid as i32, libc::SIGSTOP) };
        }
        tree.extend(below);
    }
    for pid in &tree {
        // SAFETY: as above.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let _ = child.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left: Vec<u32> = tree[1..].to_vec();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        left.retain(|pid| {
            // SAFETY: waitpid(2) without blocking; it reaps only a process
            // that became ours, and fails harmlessly for any other.
            unsafe { libc::waitpid(*pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
            std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Field `index` (0-based, after the command name) of /proc/<pid>/stat:
/// 1 is the parent's pid, 19 the start time. The name may hold spaces and
/// parentheses, so the fields are counted from its closing parenthesis.
pub fn proc_stat_field(pid: u32, index: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(index)?.parse().ok()
}

/// The processes whose parent is one of `parents`, and theirs, and so on.
fn descendants(parents: &[u32]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let links: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat_field(pid, 1)? as u32)))
        .collect();
    let mut found: Vec<u32> = parents.to_vec();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(links.iter().filter(|(pid, ppid)| *ppid == parent && !found.contains(pid)).map(|(pid, _)| *pid).collect::<Vec<_>>());
        i += 1;
    }
    found.retain(|p| !parents.contains(p));
    found
}

/// With `--verbose`, or RAMPART_TIMING set in rampart's environment, each
/// command's wall time goes to stderr when it ends: where a build's seconds go.
struct Timing {
    command: Option<(String, std::time::Instant)>,
}

impl Timing {
    fn start(command: &Cmd) -> Timing {
        let wanted = std::env::var_os("RAMPART_TIMING").is_some_and(|v| !v.is_empty()) || crate::ui::verbosity() == crate::ui::Verbosity::Verbose;
        Timing { command: wanted.then(|| (command.display(), std::time::Instant::now())) }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        if let Some((display, started)) = &self.command {
            let shown: String = display.chars().take(160).collect();
            crate::ui::line(&format!("rampart: timing: {:7.2} s  {shown}", started.elapsed().as_secs_f64()));
        }
    }
}

/// A command in dialogue: what it prints is collected, answers are written
/// to its stdin. Its process group is killed when this drops.
pub struct Dialogue {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    received: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Everything printed so far.
    pub transcript: Vec<u8>,
}

impl Dialogue {
    /// Waits until the output (since `from`) contains one of `patterns`;
    /// returns the index of the pattern and the offset after it. `None` when
    /// the command ended or the time ran out first.
    pub fn expect(&mut self, from: usize, patterns: &[&str], timeout: std::time::Duration) -> Option<(usize, usize)> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.transcript[from.min(self.transcript.len())..]).into_owned();
            let found = patterns.iter().enumerate().filter_map(|(i, p)| text.find(p).map(|at| (at, i, p.len()))).min();
            if let Some((at, index, length)) = found {
                // Offsets in the lossy text equal byte offsets for UTF-8 output.
                return Some((index, from + at + length));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || interrupted() {
                return None;
            }
            match self.received.recv_timeout(left.min(std::time::Duration::from_millis(100))) {
                Ok(bytes) => self.transcript.extend(bytes),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Writes `line` and a newline. Waits a moment first: a prompt is
    /// printed before the program turns echo off and flushes pending input,
    /// and an answer sent in between would be echoed, then lost.
    pub fn send(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let stdin = self.stdin.as_mut().context("the dialogue's stdin is closed")?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the command to end; `None` if it did not within `timeout`.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Result<Option<ExitStatus>> {
        self.stdin = None;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            while let Ok(bytes) = self.received.try_recv() {
                self.transcript.extend(bytes);
            }
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(std::time::Duration::from_millis(50));
                while let Ok(bytes) = self.received.try_recv() {
                    self.transcript.extend(bytes);
                }
                return Ok(Some(status));
            }
            if std::time::Instant::now() >= deadline || interrupted() {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn transcript_text(&self) -> String {
        String::from_utf8_lossy(&self.transcript).into_owned()
    }
}

impl Drop for Dialogue {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on the process group this child leads.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// A background process that is killed when dropped.
pub struct Background {
    child: Option<Child>,
    display: String,
}

impl Background {
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Returns the exit status if the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

fn failure_message(display: &str, status: ExitStatus, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
    let how = describe_status(status);
    if tail.is_empty() {
        format!("command failed ({how}): {display}")
    } else {
        format!("command failed ({how}): {display}\n  {tail}")
    }
}

pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(libc::SIGKILL) => "killed by SIGKILL".into(),
        Some(libc::SIGTERM) => "killed by SIGTERM".into(),
        Some(libc::SIGINT) => "killed by SIGINT".into(),
        Some(libc::SIGSEGV) => "killed by SIGSEGV".into(),
        Some(libc::SIGPIPE) => "killed by SIGPIPE".into(),
        Some(other) => format!("killed by signal {other}"),
        None => "unknown status".into(),
    }
}

/// Whether a program can be found on the pinned PATH.
/// Fails naming the Debian package of the first missing program.
pub fn require_programs(programs: &[(&str, &str)]) -> Result<()> {
    for (program, package) in programs {
        if !have_program(program) {
            bail!("{program} is not installed (Debian package {package}); {INSTALL_HINT}");
        }
    }
    Ok(())
}

pub fn have_program(program: &str) -> bool {
    ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_names_itself_and_its_status() {
        let error = Cmd::new("sh").args(["-c", "echo oops >&2; exit 3"]).run().unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("exit status 3"), "{text}");
        assert!(text.contains("sh -c 'echo oops >&2; exit 3'"), "{text}");
        assert!(text.contains("oops"), "{text}");
    }

    #[test]
    fn missing_program_says_how_to_install() {
        let error = Cmd::new("rampart-no-such-tool").run().unwrap_err();
        assert_eq!(format!("{error:#}"), format!("rampart-no-such-tool is not installed; {INSTALL_HINT}"));
    }

    #[test]
    fn slow_command_is_killed_at_its_time_limit() {
        let started = std::time::Instant::now();
        let result = Cmd::new("sleep").arg("5").run_with_timeout(std::time::Duration::from_millis(200)).unwrap();
        assert!(result.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let output = Cmd::new("echo").arg("hi").run_with_timeout(std::time::Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(output.stdout_text(), "hi\n");
    }

    #[test]
    fn timeout_kills_grandchildren_holding_the_pipes() {
        let started = std::time::Instant::now();
        let result = Cmd::new("sh").args(["-c", "sleep 30 & sleep 30"]).run_with_timeout(std::time::Duration::from_millis(300)).unwrap();
        assert!(result.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn environment_is_pinned() {
        let output = Cmd::new("sh").args(["-c", "echo $LANG $TZ"]).run().unwrap();
        assert_eq!(output.stdout_text().trim(), "C.UTF-8 UTC");
    }
}
