//! The run's stop signal as the engine's runners wait on it.
//!
//! Every attempt and every backoff waits for its answer *or* the stop, so what a wait on the
//! stop costs is paid several times per request. A `watch` receiver's `changed()` puts a waiter
//! on a locked list each time it is awaited and takes it off when dropped (measured: about 3% of
//! the engine's CPU at full rate). Here a runner registers its task's waker once, and every
//! later wait only reads a flag: a runner is one long-lived task, so its waker never changes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::lock;

/// Set once, when the run must stop; wakes every runner waiting on it.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stopped: AtomicBool,
    /// One waker per runner that ever waited, at the index its [`StopWait`] keeps.
    wakers: Mutex<Vec<Waker>>,
}

impl StopSignal {
    /// Whether [`StopSignal::set`] was called.
    pub(crate) fn is_set(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Stops the run: every current and later wait ends.
    pub(crate) fn set(&self) {
        self.stopped.store(true, Ordering::Release);
        // A waiter that registers after this lock sees the flag when it checks it next.
        for waker in lock(&self.wakers).iter() {
            waker.wake_by_ref();
        }
    }
}

/// One runner's way of waiting on the [`StopSignal`].
#[derive(Debug)]
pub(crate) struct StopWait {
    signal: Arc<StopSignal>,
    /// Where this runner's waker sits in the signal's list, and which waker it is.
    registered: Option<(usize, Waker)>,
}

impl StopWait {
    pub(crate) fn new(signal: Arc<StopSignal>) -> StopWait {
        StopWait {
            signal,
            registered: None,
        }
    }

    /// Whether the run is stopping.
    pub(crate) fn is_set(&self) -> bool {
        self.signal.is_set()
    }

    /// Resolves once the run is stopping. Cheap to create and drop: only the first wait of a
    /// task takes the signal's lock.
    pub(crate) fn stopped(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_stopped(cx))
    }

    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let waker = cx.waker();
        match &mut self.registered {
            Some((_, known)) if known.will_wake(waker) => {}
            Some((index, known)) => {
                known.clone_from(waker);
                lock(&self.signal.wakers)[*index] = waker.clone();
            }
            None => {
                let mut wakers = lock(&self.signal.wakers);
                wakers.push(waker.clone());
                self.registered = Some((wakers.len() - 1, waker.clone()));
            }
        }
        // Checked after registering, so a `set` in between is never missed.
        if self.signal.is_set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiting_runner_wakes_once_the_signal_is_set() {
        let signal = Arc::new(StopSignal::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let mut wait = StopWait::new(Arc::clone(&signal));
                tokio::spawn(async move {
                    // Waiting twice registers once and ends both times.
                    wait.stopped().await;
                    wait.stopped().await;
                    wait.is_set()
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!signal.is_set());
        signal.set();
        for waiter in waiters {
            let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("a waiter was not woken")
                .expect("waiter panicked");
            assert!(stopped);
        }
        assert!(
            lock(&signal.wakers).len() <= 3,
            "one registration per waiting task"
        );
    }
}
