//! The two things std does not offer safely: tie a child's life to ours (Linux parent-death
//! signal) and signal a whole process group.
#![allow(unsafe_code)]

use std::io;

/// Asks the kernel to SIGKILL the calling process when its parent dies. Called in the child
/// between fork and exec, so a killed reprod never leaves a service behind.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers, touches no memory of ours, and is
    // async-signal-safe, so it may run between fork and exec.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc == 0 {
        // The parent may already be gone; then nobody would ever send the signal.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } == 1 {
            return Err(io::Error::other("parent exited before the child started"));
        }
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` to every process in group `pgid`.
pub fn signal_group(pgid: u32, signal: i32) {
    if pgid == 0 {
        return;
    }
    // SAFETY: kill takes plain integers; a negative pid addresses the process group. A group
    // that is already gone gives ESRCH, which is what we want to ignore.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}

/// SIGTERM.
pub const SIGTERM: i32 = libc::SIGTERM;
/// SIGKILL.
pub const SIGKILL: i32 = libc::SIGKILL;
