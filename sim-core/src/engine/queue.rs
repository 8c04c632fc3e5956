//! The event queue: a binary heap keyed by `(time, sequence number)`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bevy_ecs::entity::Entity;
use bevy_ecs::resource::Resource;

use super::Nanos;

/// What happens at an instant. Each variant names the actor whose handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// A CPU finishes its current quantum and picks the next thread (`sched/mod.rs`).
    CpuTick(u32),
    /// A thread reaches its start time and joins its CPU's run queue.
    TaskWake(Entity),
    /// A device issues its next batch of DMA (`device.rs`).
    DeviceTick(Entity),
    /// ksmd wakes up (`mm/ksm.rs`).
    Ksmd,
    /// The page-aging scanner runs (`mm/vmscan.rs`).
    Aging,
    /// kswapd of a node wakes to reclaim (`mm/vmscan.rs`).
    Kswapd(crate::machine::Nid),
    /// A scheduled mprotect/munmap action, by index into the action list (`mm/mprotect.rs`).
    Action(u32),
    /// The recorder closes a sample interval (`stats/recorder.rs`).
    Sample,
}

impl Event {
    /// The event's kind, as errors name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CpuTick(_) => "CpuTick",
            Event::TaskWake(_) => "TaskWake",
            Event::DeviceTick(_) => "DeviceTick",
            Event::Ksmd => "Ksmd",
            Event::Aging => "Aging",
            Event::Kswapd(_) => "Kswapd",
            Event::Action(_) => "Action",
            Event::Sample => "Sample",
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    time: Nanos,
    seq: u64,
    event: Event,
}

/// The pending events and the current simulated time.
#[derive(Resource, Default)]
pub struct EventQueue {
    heap: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    now: Nanos,
    dispatched: u64,
}

impl EventQueue {
    /// Current simulated time: the time of the event being handled.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// Number of events handed out so far.
    pub fn dispatched(&self) -> u64 {
        self.dispatched
    }

    /// Schedules `event` at absolute time `time` (never in the past).
    pub fn schedule(&mut self, time: Nanos, event: Event) {
        let time = time.max(self.now);
        self.seq += 1;
        self.heap.push(Reverse(Scheduled { time, seq: self.seq, event }));
    }

    /// Schedules `event` `delay` ns from now.
    pub fn schedule_in(&mut self, delay: Nanos, event: Event) {
        self.schedule(self.now.saturating_add(delay), event);
    }

    /// Removes the earliest event if it is due before `until`, and advances time to it.
    pub fn pop_until(&mut self, until: Nanos) -> Option<Event> {
        let next = self.heap.peek()?;
        if next.0.time >= until {
            return None;
        }
        let Reverse(s) = self.heap.pop()?;
        self.now = s.time;
        self.dispatched += 1;
        Some(s.event)
    }

    /// Advances the clock to `time` once no event remains before it.
    pub fn advance_to(&mut self, time: Nanos) {
        self.now = self.now.max(time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_run_in_scheduling_order() {
        let mut q = EventQueue::default();
        q.schedule(10, Event::Sample);
        q.schedule(5, Event::CpuTick(3));
        q.schedule(10, Event::CpuTick(1));
        q.schedule(10, Event::Ksmd);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_until(100)).collect();
        assert_eq!(order, vec![Event::CpuTick(3), Event::Sample, Event::CpuTick(1), Event::Ksmd]);
        assert_eq!(q.now(), 10);
    }

    #[test]
    fn events_after_the_horizon_stay_queued() {
        let mut q = EventQueue::default();
        q.schedule(50, Event::Aging);
        assert_eq!(q.pop_until(50), None);
        assert_eq!(q.pop_until(51), Some(Event::Aging));
    }
}
