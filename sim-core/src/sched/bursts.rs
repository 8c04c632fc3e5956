//! What a sleeping thread asks of the CPU: a budget of CPU time per wake, from a fixed
//! period or from a recorded schedule. The sleep and the wake themselves are the
//! scheduler's (try_to_wake_up() in mod.rs); this file only says when and for how long.

use std::sync::Arc;

use crate::engine::Nanos;

/// A thread that runs `run` of CPU time every `period` from its start and sleeps in between
/// (a clock_nanosleep() to the next period, as the oracle's sampler does); each wake goes
/// through select_task_rq_fair().
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periodic {
    pub period: Nanos,
    pub run: Nanos,
}

/// When a sleeping thread wakes and how much CPU time each wake brings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunSchedule {
    Periodic(Periodic),
    /// `(at, run)` pairs in time order, replayed as recorded: the thread wakes at each `at`
    /// with `run` of CPU time. A burst not done when the next is due runs on into it, as a
    /// program behind its schedule works back to back. After the last it sleeps for good.
    Recorded {
        bursts: Arc<[(Nanos, Nanos)]>,
        next: usize,
    },
}

/// What a sleeping thread does once a quantum has been charged to its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterBurst {
    /// Budget left, or the next burst already due: it stays on the run queue.
    Runs,
    /// Off the run queue until this time (None: for the rest of the run).
    Sleeps(Option<Nanos>),
}

impl RunSchedule {
    /// A recorded schedule, with its first burst granted at the thread's start.
    pub fn recorded(bursts: Vec<(Nanos, Nanos)>) -> Self {
        RunSchedule::Recorded { bursts: bursts.into(), next: 1 }
    }

    /// The CPU time the thread's first wake brings.
    pub fn first_budget(&self) -> Nanos {
        match self {
            RunSchedule::Periodic(p) => p.run,
            RunSchedule::Recorded { bursts, .. } => bursts.first().map_or(0, |b| b.1),
        }
    }

    /// The thread's budget ran out at `end`: refills `budget` for the next burst and says
    /// whether the thread sleeps until it. `start` is the thread's start time.
    fn next_burst(&mut self, budget: &mut Nanos, start: Nanos, end: Nanos) -> AfterBurst {
        match self {
            RunSchedule::Periodic(p) => {
                *budget = p.run;
                let periods = (end - start.min(end)) / p.period + 1;
                AfterBurst::Sleeps(Some(start.saturating_add(periods.saturating_mul(p.period))))
            }
            RunSchedule::Recorded { bursts, next } => {
                let Some(&(at, run)) = bursts.get(*next) else {
                    return AfterBurst::Sleeps(None);
                };
                *next += 1;
                *budget = run;
                if at <= end { AfterBurst::Runs } else { AfterBurst::Sleeps(Some(at)) }
            }
        }
    }
}

/// Charges `spent` of a sleeping thread's run to its `budget`; when that is used up, the
/// schedule gives the next budget and whether the thread sleeps first.
pub fn burst_done(
    schedule: &mut RunSchedule,
    budget: &mut Nanos,
    start: Nanos,
    spent: Nanos,
    end: Nanos,
) -> AfterBurst {
    *budget = budget.saturating_sub(spent);
    if *budget > 0 {
        return AfterBurst::Runs;
    }
    schedule.next_burst(budget, start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A periodic thread sleeps to its next period's start, however late its run ended.
    #[test]
    fn a_periodic_thread_sleeps_to_its_next_period() {
        let mut s = RunSchedule::Periodic(Periodic { period: 100, run: 10 });
        let mut budget = s.first_budget();
        assert_eq!(burst_done(&mut s, &mut budget, 50, 4, 54), AfterBurst::Runs);
        assert_eq!(burst_done(&mut s, &mut budget, 50, 6, 80), AfterBurst::Sleeps(Some(150)));
        assert_eq!(budget, 10);
        assert_eq!(burst_done(&mut s, &mut budget, 50, 10, 260), AfterBurst::Sleeps(Some(350)));
    }

    /// A recorded burst due while the last still ran follows it without a sleep; the others
    /// wake at their recorded times; after the last the thread sleeps for good.
    #[test]
    fn a_recorded_schedule_is_replayed_and_falls_behind_as_recorded() {
        let mut s = RunSchedule::recorded(vec![(100, 30), (120, 5), (400, 7)]);
        let mut budget = s.first_budget();
        assert_eq!(budget, 30);
        assert_eq!(burst_done(&mut s, &mut budget, 100, 30, 140), AfterBurst::Runs, "the 120 burst is due");
        assert_eq!(budget, 5);
        assert_eq!(burst_done(&mut s, &mut budget, 100, 5, 145), AfterBurst::Sleeps(Some(400)));
        assert_eq!(budget, 7);
        assert_eq!(burst_done(&mut s, &mut budget, 100, 7, 407), AfterBurst::Sleeps(None));
    }
}
