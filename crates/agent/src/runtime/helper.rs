//! The embedded runtime's helper process. youki's libcontainer is written
//! for a single-threaded command line runtime and changes its whole process
//! as it goes: it writes the caller's `/proc/self/oom_score_adj` (inherited
//! by the container), makes the caller non-dumpable, `chdir`s to bind and
//! connect its Unix sockets (so two calls at once in one process can reach
//! each other's container), and forks with a raw `clone3`, skipping libc's
//! fork handlers, after which the child allocates, logs and opens files
//! before it execs. None of that is safe inside the agent, a multi-threaded
//! tokio process whose other threads may hold the allocator's, the log's or
//! the environment's locks at the moment of the fork.
//!
//! So the agent starts this helper once, a fresh exec of its own binary
//! with one thread, and sends it every call over a socket. For each call
//! the helper forks a worker, single-threaded like itself, which runs the
//! libcontainer call with clean process state (its own `oom_score_adj`,
//! working directory and dumpable flag), answers, and exits. A fork of this
//! small process costs a fraction of a millisecond; calls run side by side.
//! The agent gets each worker's pidfd and waits for the worker's end before
//! a call returns: by then the container's process, orphaned by the worker,
//! has been reparented to the agent, which is a subreaper and so reads its
//! exit status.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;

use super::wire::{self, Answer, Reply, Request};
use super::{ContainerState, Status};

/// The `kubox` subcommand that runs the helper; hidden from users.
pub const HELPER_COMMAND: &str = "runtime-helper";
/// The helper's end of its socket to the agent.
pub(super) const CONTROL_FD: i32 = 3;

/// Serves the agent's runtime calls on descriptor 3 until the agent closes
/// its end (as it does when it exits); only for `kubox runtime-helper`.
pub fn serve_helper() -> ! {
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("the embedded runtime's helper: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve() -> std::io::Result<()> {
    let _ = rustix::thread::set_name(c"kubox-runtime");
    // SAFETY: only looked at here, while nothing can close it.
    let given = unsafe { BorrowedFd::borrow_raw(CONTROL_FD) };
    if rustix::net::sockopt::socket_type(given).ok() != Some(rustix::net::SocketType::SEQPACKET) {
        return Err(std::io::Error::other(
            "descriptor 3 is not the agent's socket: the helper is started by the node agent",
        ));
    }
    // SAFETY: the agent starts the helper with its socket as this
    // descriptor, open (checked above) and owned by nothing else here.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    rustix::io::fcntl_setfd(&control, rustix::io::FdFlags::CLOEXEC)?;
    // Workers are reaped by the kernel; the agent learns of their end
    // through their pidfds.
    set_signal(libc::SIGCHLD, libc::SIG_IGN);
    loop {
        let Some((request, fds)) = wire::recv::<Request>(control.as_fd())? else {
            return Ok(());
        };
        let mut fds = fds.into_iter();
        let Some(reply) = fds.next() else {
            continue;
        };
        match fork_worker() {
            Ok(None) => {
                drop(control);
                worker(reply, request, fds.collect());
            }
            Ok(Some(pidfd)) => {
                let _ = wire::send(reply.as_fd(), &Reply::Forked, &[pidfd.as_fd()]);
            }
            Err(e) => {
                let _ = wire::send(reply.as_fd(), &Reply::NotForked(e.to_string()), &[]);
            }
        }
    }
}

fn set_signal(signal: i32, handler: libc::sighandler_t) {
    // SAFETY: sets a disposition (ignore or default), installs no handler code.
    unsafe { libc::signal(signal, handler) };
}

/// Forks, returning the child's pidfd in the parent and `None` in the child.
fn fork_worker() -> std::io::Result<Option<OwnedFd>> {
    // The kernel's `struct clone_args`.
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without shared memory, stack or TLS is a fork that
    // also returns the child's pidfd, so the child cannot be reaped and its
    // PID reused before the agent holds that pidfd. This process has one
    // thread, so the child's copy of it is whole, locks included.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(None),
        // SAFETY: the kernel made this descriptor for this process.
        _ => Ok(Some(unsafe { OwnedFd::from_raw_fd(pidfd) })),
    }
}

/// Runs one call in a forked worker, answers it and exits.
fn worker(reply: OwnedFd, request: Request, fds: Vec<OwnedFd>) -> ! {
    // Container processes start with the signal dispositions they inherit
    // through exec: the defaults, not this process's (the Rust runtime
    // ignores SIGPIPE; the helper ignores SIGCHLD).
    set_signal(libc::SIGCHLD, libc::SIG_DFL);
    set_signal(libc::SIGPIPE, libc::SIG_DFL);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(request, fds)))
        .unwrap_or_else(|_| Err("the runtime's worker panicked".to_owned()));
    let _ = wire::send(reply.as_fd(), &Reply::Done(outcome), &[]);
    // SAFETY: ends this forked process without running the exit handlers
    // it inherited from the helper.
    unsafe { libc::_exit(0) }
}

/// How long a delete waits for the container's process to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Waits, at most `bound`, until a process is gone from the process table.
/// A cgroup v1 hierarchy counts a zombie among its cgroup's tasks, so the
/// cgroup cannot be removed before; and a container adopted after an agent
/// restart is reaped by init, not by the agent, whenever init gets to it.
fn wait_reaped(pid: i32, bound: Duration) {
    // Its start time tells the process from a later one given the same PID.
    let start_time = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, fields) = stat.rsplit_once(')')?;
        // starttime is field 22; fields after the command name start at 3.
        fields.split_whitespace().nth(19).map(str::to_owned)
    };
    let Some(first) = start_time() else {
        return;
    };
    let deadline = Instant::now() + bound;
    while start_time().as_ref() == Some(&first) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An error with its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn builder(root: &Path, id: &str) -> Result<ContainerBuilder, String> {
    ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .map_err(|e| chain(&e))
}

/// A container's state; a container libcontainer does not know is an error
/// told here, as runc tells it, not by libcontainer's error log.
fn load(root: &Path, id: &str) -> Result<Container, String> {
    let dir = root.join(id);
    if !dir.exists() {
        return Err("container does not exist".to_owned());
    }
    Container::load(dir).map_err(|e| chain(&e))
}

fn call(request: Request, fds: Vec<OwnedFd>) -> Result<Answer, String> {
    let mut fds = fds.into_iter();
    let mut next_fd = || {
        fds.next()
            .ok_or_else(|| "a descriptor is missing".to_owned())
    };
    match request {
        Request::Create {
            root,
            id,
            bundle,
            stdin,
            console,
        } => {
            let (stdout, stderr) = (next_fd()?, next_fd()?);
            let mut b = builder(&root, &id)?
                .with_stdout(stdout)
                .with_stderr(stderr)
                .with_console_socket(console);
            if stdin {
                b = b.with_stdin(next_fd()?);
            }
            let container = b
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| chain(&e))?;
            container
                .pid()
                .map(|pid| Answer::Pid(pid.as_raw() as u32))
                .ok_or_else(|| "the container has no process".to_owned())
        }
        Request::Start { root, id } => {
            load(&root, &id)?.start().map_err(|e| chain(&e))?;
            Ok(Answer::Nothing)
        }
        Request::State { root, id } => {
            if !root.join(&id).exists() {
                return Ok(Answer::State(None));
            }
            let container = load(&root, &id)?;
            let status = match container.status() {
                ContainerStatus::Creating | ContainerStatus::Created => Status::Created,
                ContainerStatus::Running => Status::Running,
                ContainerStatus::Paused => Status::Paused,
                ContainerStatus::Stopped => Status::Stopped,
            };
            Ok(Answer::State(Some(ContainerState {
                status,
                pid: container.pid().map(|p| p.as_raw() as u32),
            })))
        }
        Request::Kill { root, id, signal } => {
            let signal = libcontainer::signal::Signal::try_from(signal).map_err(|e| chain(&e))?;
            load(&root, &id)?
                .kill(signal, false)
                .map_err(|e| chain(&e))?;
            Ok(Answer::Nothing)
        }
        Request::Exec {
            root,
            id,
            argv,
            console,
        } => {
            let stdio = match console {
                Some(_) => None,
                None => Some((next_fd()?, next_fd()?, next_fd()?)),
            };
            exec(&root, &id, argv, stdio, console)
        }
        Request::Delete { root, id } => {
            if !root.join(&id).exists() {
                return Ok(Answer::Nothing);
            }
            let mut container = load(&root, &id)?;
            if let Some(pid) = container.pid() {
                // Whatever still runs in its cgroups goes first (an error
                // only means nothing does).
                let sigkill =
                    libcontainer::signal::Signal::try_from(libc::SIGKILL).map_err(|e| chain(&e))?;
                let _ = container.kill(sigkill, true);
                wait_reaped(pid.as_raw(), REAP_WAIT);
            }
            load(&root, &id)?.delete(true).map_err(|e| chain(&e))?;
            Ok(Answer::Nothing)
        }
    }
}

/// Starts a process in a running container as `runc exec` would: the
/// container's own process settings (user, working directory, environment,
/// capabilities) with another command line.
fn exec(
    root: &Path,
    id: &str,
    argv: Vec<String>,
    stdio: Option<(OwnedFd, OwnedFd, OwnedFd)>,
    console: Option<PathBuf>,
) -> Result<Answer, String> {
    let container = load(root, id)?;
    let spec = Spec::load(container.bundle().join("config.json")).map_err(|e| chain(&e))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| "the container's configuration has no process".to_owned())?;
    process.set_args(Some(argv));
    process.set_terminal(Some(console.is_some()));
    if console.is_some() {
        // As containerd gives a command run with a terminal.
        let mut env = process.env().clone().unwrap_or_default();
        env.retain(|e| !e.starts_with("TERM="));
        env.push("TERM=xterm".into());
        process.set_env(Some(env));
    }
    // The worker's PID names the file uniquely among the calls running now.
    let process_file = root.join(id).join(format!(
        "exec-{}.json",
        rustix::process::getpid().as_raw_nonzero()
    ));
    let written = serde_json::to_vec(&process)
        .map_err(|e| e.to_string())
        .and_then(|json| std::fs::write(&process_file, json).map_err(|e| e.to_string()));
    if let Err(e) = written {
        return Err(format!("writing {}: {e}", process_file.display()));
    }
    let mut b = builder(root, id)?.with_console_socket(console);
    if let Some((stdin, stdout, stderr)) = stdio {
        b = b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr);
    }
    let pid = b
        .as_tenant()
        .with_process(Some(&process_file))
        .with_detach(true)
        .build();
    let _ = std::fs::remove_file(&process_file);
    let pid = pid.map_err(|e| chain(&e))?;
    Ok(Answer::Pid(pid.as_raw() as u32))
}
