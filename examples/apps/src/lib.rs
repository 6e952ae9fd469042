//! What the example applications share: a small HTTP/1.1 server and
//! client, a Redis (RESP) client, and exiting on SIGTERM. Standard library
//! only, so the images built from them hold one binary and libc.

pub mod http;
pub mod redis;

/// Exits at once on SIGTERM. A container's first process ignores signals
/// it installs no handler for, so without this every pod deletion would
/// wait out its grace period.
pub fn exit_on_sigterm() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn _exit(status: i32) -> !;
    }
    extern "C" fn on_term(_: i32) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(0) }
    }
    const SIGTERM: i32 = 15;
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        signal(SIGTERM, on_term);
    }
}

/// An environment variable, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}
