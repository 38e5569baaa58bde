//! Runners: the long-lived tasks operations run on.
//!
//! Each runner takes the next operation of the schedule, waits for its intended start, runs it,
//! and takes the next. A runner goes in flight only when its operation is due, and runners
//! never outnumber `max_in_flight`, so that bound holds. When the last idle runner goes in
//! flight it starts another, up to the bound, so one is always waiting for the next operation:
//! a run has as many runners as it ever had operations in flight, plus one.
//!
//! Only one runner at a time holds an operation that is not due yet; the other idle runners wait
//! for their turn, which passes on as soon as that operation is due. Letting every idle runner
//! take an operation ahead of time would have each sleep on a timer of its own; at 5,000
//! operations per second that raised the median schedule lag from 0.7 to 1.1 ms (measured: the
//! lag spread from 0–1 ms to 0–2 ms, an extra millisecond tick of tokio's timers for most
//! operations).
//!
//! Against a task per operation (the engine's first design), nothing is spawned, allocated or
//! bound to a semaphore per operation, and each runner reuses one timer for its waits and
//! timeouts: measured at full rate, a quarter less CPU per request (`bench/generators.py`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::stop::{StopSignal, StopWait};
use crate::{PlannedOp, Schedule, Shared, lock};

/// The runners of one run and the schedule they share.
pub(crate) struct Pool {
    dispatch: Mutex<Dispatch>,
    stop: Arc<StopSignal>,
    /// `max_in_flight`: runners are never more.
    max: usize,
    /// Runners started.
    started: AtomicUsize,
    /// Runners not in flight: taking an operation or waiting for its start.
    idle: AtomicUsize,
    /// Every runner started, for [`Pool::join`].
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Passed on whenever the next operation is free to take (or the schedule ended), to one
    /// runner waiting for it.
    turn: Notify,
}

/// What dispatching the schedule did.
#[derive(Debug, Default)]
pub(crate) struct Dispatched {
    pub(crate) first_intended_us: Option<i64>,
    pub(crate) last_intended_us: i64,
    /// Operations counted instead of sent: the run's wall-clock time was up.
    pub(crate) unsent: u64,
}

/// The schedule as the runners share it.
struct Dispatch {
    schedule: Schedule,
    /// When the load started: the schedule's times count from here.
    offset_us: i64,
    /// Past this, operations are counted instead of sent.
    deadline_us: i64,
    /// The schedule is exhausted, cut at the deadline, or the run is stopping.
    ended: bool,
    /// A runner holds the next operation and waits for its start; the others wait for their
    /// turn ([`Pool::turn`]) instead of taking later operations ahead of time.
    waiting: bool,
    done: Dispatched,
}

/// What a runner is to do next.
enum Claim {
    /// Run this operation (wait for its start first if it is in the future).
    Run(PlannedOp),
    /// Another runner waits for the next operation's start: wait for the turn.
    Wait,
    /// No more operations will run.
    End,
}

impl Dispatch {
    /// What the runner asking at `now_us` does next.
    fn claim(&mut self, now_us: i64, stopping: bool) -> Claim {
        if self.ended {
            return Claim::End;
        }
        if self.waiting {
            return Claim::Wait;
        }
        let mut op = match self.schedule.next() {
            Some(op) if !stopping => op,
            _ => {
                self.ended = true;
                return Claim::End;
            }
        };
        op.at_us += self.offset_us;
        if now_us > self.deadline_us {
            let (rest, last) = self.schedule.count_rest();
            self.done.unsent = 1 + rest;
            self.done.last_intended_us = last.map_or(op.at_us, |at| at + self.offset_us);
            self.ended = true;
            return Claim::End;
        }
        self.done.first_intended_us.get_or_insert(op.at_us);
        self.done.last_intended_us = op.at_us;
        self.waiting = op.at_us > now_us;
        Claim::Run(op)
    }
}

impl Pool {
    /// Runners for `schedule` (whose times count from `offset_us`), at most `max` of them,
    /// cutting it at `deadline_us`.
    pub(crate) fn new(
        schedule: Schedule,
        offset_us: i64,
        deadline_us: i64,
        stop: Arc<StopSignal>,
        max: usize,
    ) -> Pool {
        assert!(max > 0, "a run needs at least one runner");
        Pool {
            dispatch: Mutex::new(Dispatch {
                schedule,
                offset_us,
                deadline_us,
                ended: false,
                waiting: false,
                done: Dispatched::default(),
            }),
            stop,
            max,
            started: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            handles: Mutex::new(Vec::new()),
            turn: Notify::new(),
        }
    }

    /// Starts one more runner, counted idle from now, unless `max` are started already.
    pub(crate) fn start(shared: &Arc<Shared>) {
        let pool = &shared.pool;
        // One check-and-count, so that two runners going in flight at once cannot both start
        // the last one allowed.
        let counted = pool
            .started
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < pool.max).then_some(n + 1)
            });
        if counted.is_err() {
            return;
        }
        pool.idle.fetch_add(1, Ordering::AcqRel);
        let handle = tokio::spawn(runner(Arc::clone(shared)));
        lock(&pool.handles).push(handle);
    }

    /// Waits for every runner to end. A runner that panicked outside an operation (those are
    /// contained where they run) stops the others, and its message is returned.
    pub(crate) async fn join(&self) -> Option<String> {
        // A runner only starts another while it runs, so once every handle taken has ended and
        // no new one appeared, all have ended.
        let mut failure = None;
        loop {
            let handles = std::mem::take(&mut *lock(&self.handles));
            if handles.is_empty() {
                return failure;
            }
            for handle in handles {
                if let Err(e) = handle.await
                    && e.is_panic()
                {
                    self.stop.set();
                    failure.get_or_insert_with(|| format!("a load runner failed: {e}"));
                }
            }
        }
    }

    /// Stops the run from inside: no runner takes another operation, and in-flight ones end.
    pub(crate) fn stop_all(&self) {
        self.stop.set();
    }

    /// What dispatching did; complete once [`Pool::join`] returned.
    pub(crate) fn dispatched(&self) -> Dispatched {
        std::mem::take(&mut lock(&self.dispatch).done)
    }
}

/// Takes operations from the schedule and runs them, one at a time, until it ends.
async fn runner(shared: Arc<Shared>) {
    let pool = &shared.pool;
    let mut rt = Runner {
        stop: StopWait::new(Arc::clone(&pool.stop)),
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    loop {
        let now_us = shared.clock.now_us();
        let claim = lock(&pool.dispatch).claim(now_us, rt.stop.is_set());
        let op = match claim {
            Claim::Run(op) => op,
            Claim::Wait => match rt.wait_turn(&pool.turn).await {
                Ok(()) => continue,
                Err(Stopped) => break,
            },
            Claim::End => {
                // Runners waiting for their turn learn it from the next claim.
                pool.turn.notify_one();
                break;
            }
        };
        if op.at_us > now_us {
            let slept = if shared.precise {
                rt.sleep_precisely(shared.clock, op.at_us).await
            } else {
                rt.sleep_until(shared.clock.instant_at(op.at_us).into())
                    .await
            };
            lock(&pool.dispatch).waiting = false;
            if slept.is_err() {
                break;
            }
        }
        // The next operation is free to take.
        pool.turn.notify_one();
        // Going in flight: if no runner is left to take the next operation, start one.
        if pool.idle.fetch_sub(1, Ordering::AcqRel) == 1 {
            Pool::start(&shared);
        }
        // A panic while running an operation is contained: the operation is recorded failed with
        // the message, the run stops, and the history is still finished by the caller. The
        // future is pinned in place, so containing costs no allocation per operation.
        let planned = op.clone();
        let mut running = std::pin::pin!(crate::run_op(&shared, op, &mut rt));
        let ran = std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                running.as_mut().poll(cx)
            })) {
                Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
                Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
                Err(panic) => std::task::Poll::Ready(Err(panic)),
            }
        })
        .await;
        if let Err(panic) = ran {
            crate::contain(&shared, &planned, panic).await;
            pool.idle.fetch_add(1, Ordering::AcqRel);
            break;
        }
        pool.idle.fetch_add(1, Ordering::AcqRel);
    }
    pool.idle.fetch_sub(1, Ordering::AcqRel);
}

/// What a runner keeps across operations: its way of waiting on the stop, and its timer.
pub(crate) struct Runner {
    pub(crate) stop: StopWait,
    /// Reset for every wait: moving a pending timer's deadline later costs one atomic
    /// operation, while a fresh timer is inserted into and removed from the timer wheel.
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// The run is stopping.
pub(crate) struct Stopped;

impl Runner {
    /// Waits until `deadline`, or until the run stops.
    pub(crate) async fn sleep_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(), Stopped> {
        self.timer.as_mut().reset(deadline);
        tokio::select! {
            biased;
            _ = self.stop.stopped() => Err(Stopped),
            _ = self.timer.as_mut() => Ok(()),
        }
    }

    /// Waits until `at_us` on `clock` to the microsecond, or until the run stops: the timer
    /// (which fires on millisecond ticks) until shortly before, then yielding to other tasks
    /// until the moment. Costs up to a tick and a half of polling per wait, so only scenarios
    /// with an overlap window that the ticks would collapse use it.
    pub(crate) async fn sleep_precisely(
        &mut self,
        clock: reprod_history::RunClock,
        at_us: i64,
    ) -> Result<(), Stopped> {
        const TICK_US: i64 = 1_500;
        if at_us - TICK_US > clock.now_us() {
            self.sleep_until(clock.instant_at(at_us - TICK_US).into())
                .await?;
        }
        while clock.now_us() < at_us {
            if self.stop.is_set() {
                return Err(Stopped);
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Waits for `turn`, or until the run stops.
    async fn wait_turn(&mut self, turn: &Notify) -> Result<(), Stopped> {
        tokio::select! {
            biased;
            _ = self.stop.stopped() => Err(Stopped),
            _ = turn.notified() => Ok(()),
        }
    }

    /// Runs `work` until `deadline` at most: `None` when it took longer.
    pub(crate) async fn within<F: Future>(
        &mut self,
        deadline: tokio::time::Instant,
        work: F,
    ) -> Result<Option<F::Output>, Stopped> {
        self.timer.as_mut().reset(deadline);
        tokio::select! {
            biased;
            _ = self.stop.stopped() => Err(Stopped),
            done = work => Ok(Some(done)),
            _ = self.timer.as_mut() => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch(deadline_us: i64) -> Dispatch {
        let scenario = crate::test_scenario(
            "[[caller]]\nname = \"c\"\nrequest = { path = \"/\" }\nrate = 1000\n",
        );
        Dispatch {
            schedule: Schedule::new(&scenario),
            offset_us: 0,
            deadline_us,
            ended: false,
            waiting: false,
            done: Dispatched::default(),
        }
    }

    fn at(claim: Claim) -> Option<i64> {
        match claim {
            Claim::Run(op) => Some(op.at_us),
            Claim::Wait | Claim::End => None,
        }
    }

    #[tokio::test]
    async fn a_precise_wait_never_ends_early_and_ends_on_a_stop() {
        let signal = Arc::new(StopSignal::default());
        let mut rt = Runner {
            stop: StopWait::new(Arc::clone(&signal)),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        let clock = reprod_history::RunClock::start();
        for offset_us in [0, 300, 2_700, 12_345] {
            let at = clock.now_us() + offset_us;
            assert!(rt.sleep_precisely(clock, at).await.is_ok());
            assert!(clock.now_us() >= at, "woke before {at}");
        }
        signal.set();
        let far = clock.now_us() + 60_000_000;
        assert!(rt.sleep_precisely(clock, far).await.is_err());
    }

    #[test]
    fn one_runner_at_a_time_holds_an_operation_that_is_not_due() {
        let mut d = dispatch(i64::MAX);
        // At 2.5 ms, the operations of 0, 1 and 2 ms are due and go to whoever asks.
        for due in [0, 1000, 2000] {
            assert_eq!(at(d.claim(2500, false)), Some(due));
        }
        // The next one is not due: one runner takes it, the others wait for their turn.
        assert_eq!(at(d.claim(2500, false)), Some(3000));
        assert!(matches!(d.claim(2600, false), Claim::Wait));
        // Once its holder saw it due, the turn passes on.
        d.waiting = false;
        assert_eq!(at(d.claim(3100, false)), Some(4000));
        d.waiting = false;
        assert!(matches!(d.claim(3100, true), Claim::End), "a stop ends it");
        assert!(matches!(d.claim(9000, false), Claim::End));
    }

    #[test]
    fn past_the_deadline_the_rest_is_counted() {
        let mut d = dispatch(10_000);
        for _ in 0..5 {
            assert!(matches!(d.claim(0, false), Claim::Run(_)));
            d.waiting = false;
        }
        assert!(matches!(d.claim(10_001, false), Claim::End));
        // 1,000/s for the test scenario's 10 s: 10,000 operations, 5 taken.
        assert_eq!(d.done.unsent, 9_995);
        assert_eq!(d.done.first_intended_us, Some(0));
        assert_eq!(d.done.last_intended_us, 9_999_000);
    }
}
