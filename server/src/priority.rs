//! Scheduling priority of SQLite's worker threads. sqlx runs each SQLite connection on a thread
//! of its own; the chat pipeline's batches go through one of them at a time, so that thread is
//! the serial path every send waits on. Under load it competed on equal terms with the runtime
//! workers (and, on a shared machine, with everything else): runnable but waiting about as long
//! as it ran, while the rest of the server idled waiting for its commits. Giving these threads
//! a lower nice value (as nginx's `worker_priority` does for its workers) lets them run as soon
//! as they have work. Lowering a nice value needs `CAP_SYS_NICE` (or root); without it the
//! threads keep the default priority and the server runs as before.

use std::path::Path;

use rustix::process::{Pid, setpriority_process};

/// Prefix of the names the store gives SQLite's connection threads (`chat-sqlite-N`; Linux
/// keeps the first 15 bytes of a thread's name).
pub const SQLITE_THREAD_PREFIX: &str = "chat-sqlite-";

/// Why a thread's priority could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    /// The process may not lower nice values (no `CAP_SYS_NICE`, not root).
    #[error("not permitted to raise thread priority (needs CAP_SYS_NICE or root)")]
    NotPermitted,
    /// The list of the process's threads could not be read.
    #[error("listing this process's threads: {0}")]
    Threads(#[from] std::io::Error),
    /// `setpriority` failed for another reason.
    #[error("setting a thread's priority: {0}")]
    Set(rustix::io::Errno),
}

/// Sets the nice value of every thread of this process whose name starts with `prefix` to
/// `nice`; returns how many threads it set. Linux only (elsewhere: none).
pub fn set_threads_nice(prefix: &str, nice: i32) -> Result<usize, PriorityError> {
    let tasks = Path::new("/proc/self/task");
    if !tasks.exists() {
        return Ok(0);
    }
    let mut set = 0;
    for entry in std::fs::read_dir(tasks)? {
        let entry = entry?;
        // A thread may end between the listing and the read: skip it.
        let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        match setpriority_process(Some(tid), nice) {
            Ok(()) => set += 1,
            Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
                return Err(PriorityError::NotPermitted);
            }
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(PriorityError::Set(e)),
        }
    }
    Ok(set)
}

/// The nice value of thread `tid` of this process, read from `/proc` (`None` if it is gone);
/// what the tests check the setter against.
#[cfg(test)]
pub(crate) fn thread_nice(tid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the name (which may hold spaces) start after its closing parenthesis; the
    // nice value is field 19 of the whole line, the 17th after the name.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(16)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc;

    /// A thread named `name` that reports its thread id and sleeps until unparked.
    fn parked(name: &str) -> (std::thread::JoinHandle<()>, i32) {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                    .unwrap();
                std::thread::park();
            })
            .unwrap();
        (handle, rx.recv().unwrap())
    }

    /// Whether this process may lower a nice value (probed on a thread of its own).
    fn may_lower_nice() -> bool {
        std::thread::spawn(|| setpriority_process(None, -1).is_ok())
            .join()
            .unwrap()
    }

    #[test]
    fn sets_the_threads_of_the_prefix_and_no_other() {
        let (target, target_tid) = parked("prio-test-hit");
        let (other, other_tid) = parked("prio-test-mis");
        let other_before = thread_nice(other_tid).unwrap();

        // Raising a nice value is always permitted.
        assert_eq!(set_threads_nice("prio-test-h", 5).unwrap(), 1);
        assert_eq!(thread_nice(target_tid), Some(5));
        assert_eq!(thread_nice(other_tid), Some(other_before));

        // Lowering it needs the privilege, and says so when it is missing.
        match set_threads_nice("prio-test-h", -5) {
            Ok(n) => {
                assert!(may_lower_nice());
                assert_eq!(n, 1);
                assert_eq!(thread_nice(target_tid), Some(-5));
            }
            Err(PriorityError::NotPermitted) => assert!(!may_lower_nice()),
            Err(e) => panic!("unexpected error {e}"),
        }
        assert_eq!(thread_nice(other_tid), Some(other_before));

        for handle in [target, other] {
            handle.thread().unpark();
            handle.join().unwrap();
        }
    }

    #[test]
    fn no_thread_of_the_prefix_is_no_error() {
        assert_eq!(set_threads_nice("no-such-thread-", -5).unwrap(), 0);
    }
}
