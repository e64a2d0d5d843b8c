//! Small things every module may use: the wall clock in ms, a lock that outlives a panic, and
//! the crash tests' failpoints.

/// Dies here (SIGKILL) once, if the variable `var` names a file that exists (the file is
/// removed first): for the crash tests that must hit a narrow window, e.g. between a request
/// leaving and its response being recorded.
pub(crate) fn failpoint(var: &str) {
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    if std::fs::remove_file(&path).is_ok() {
        tracing::warn!(failpoint = var, "failpoint: dying here");
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on this very process, as a crash would.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// The wall clock, in ms since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The mutex's guard, also after a thread panicked holding it: what it guards is kept
/// consistent by every holder between statements, so it is still good.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
