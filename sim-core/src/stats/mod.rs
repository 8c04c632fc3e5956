//! What a run measures: the kernel's vmstat counters, the simulator's own observations
//! (locality, stale mappings, ...), and the time-series recorder.

pub mod recorder;
pub mod summary;

use bevy_ecs::resource::Resource;

/// Declares a struct of `u64` counters with their result names, so the summary and the time
/// series are generated from one list and cannot drift apart.
/// `in "group"` names the summary group the counters are reported in.
macro_rules! counters {
    ($(#[$meta:meta])* $name:ident $(in $group:literal)? { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$fmeta])* pub $field: u64,)* }

        impl $name {
            $(
            /// The summary group the counters are reported in.
            pub const GROUP: &'static str = $group;
            )?

            /// Counter names, in result order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Counter values, in the order of [`Self::NAMES`].
            pub fn values(&self) -> Vec<u64> {
                vec![$(self.$field),*]
            }

            /// What was counted since `earlier` (counters only grow).
            pub fn since(&self, earlier: &Self) -> Self {
                Self { $($field: self.$field - earlier.$field,)* }
            }
        }
    };
}

/// A summary metric named by the counter that holds it, as `(group, name)`: the field is
/// checked when compiled, so a counter renamed in the model fails the build of every list
/// that names it (the kernel oracle's). `metric!(GROUP; Struct.field)` names a group that is
/// not the struct's own.
#[macro_export]
macro_rules! metric {
    ($counters:ident . $field:ident) => {
        $crate::metric!($crate::stats::$counters::GROUP; $counters.$field)
    };
    ($group:expr; $counters:ident . $field:ident) => {{
        let _ = ::core::mem::offset_of!($crate::stats::$counters, $field);
        ($group, stringify!($field))
    }};
}

counters! {
    /// /proc/vmstat counters, named as the kernel names them.
    VmStat in "vmstat" {
        /// PTEs made PROT_NONE by change_prot_numa().
        numa_pte_updates,
        /// PMDs made PROT_NONE by change_huge_pmd() (each also counts 512 numa_pte_updates).
        numa_huge_pte_updates,
        numa_hint_faults,
        numa_hint_faults_local,
        numa_pages_migrated,
        pgmigrate_success,
        pgmigrate_fail,
        /// Writes that broke a KSM page's sharing (do_wp_page() on a KSM page).
        cow_ksm,
        /// THPs allocated at a page fault (do_huge_pmd_anonymous_page()).
        thp_fault_alloc,
        /// Faults in THP-eligible ranges that fell back to 4 KiB pages.
        thp_fault_fallback,
        /// THPs NUMA balancing migrated whole, failed to migrate, or split to migrate.
        thp_migration_success,
        thp_migration_fail,
        thp_migration_split,
        /// PMD mappings split into PTEs (__split_huge_pmd()).
        thp_split_pmd,
    }
}

counters! {
    /// The /proc/vmstat counters of file THPs, which only shmem (memfd) memory has here,
    /// reported in the `vmstat` group when `shmem_enabled` lets a memfd hold THPs.
    FileThpStat in "vmstat" {
        /// Huge folios added to a shmem file's page cache (shmem_add_to_page_cache()).
        thp_file_alloc,
        /// Shmem faults that tried a huge folio and took a 4 KiB page (shmem_alloc_hugefolio()).
        thp_file_fallback,
        /// File THPs mapped by a PMD (do_set_pmd()).
        thp_file_mapped,
    }
}

counters! {
    /// The /proc/vmstat counters of memory tiering (node stats summed over nodes, as
    /// /proc/vmstat shows them), reported in the `vmstat` group on tiered runs only.
    TierStat in "vmstat" {
        /// Slow-tier pages migrated to the top tier in memory-tiering mode.
        pgpromote_success,
        /// Pages that passed the hot threshold and were counted by the rate limiter.
        pgpromote_candidate,
        /// Pages kswapd demoted to a lower tier.
        pgdemote_kswapd,
    }
}

/// Who touched memory or took a hinting fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cpu = 0,
    Kvm = 1,
    Device = 2,
    FollowPage = 3,
}

counters! {
    /// task_numa_migrate()'s outcomes (`numasim`). No released kernel counts them: the
    /// 6.16-rc1 vmstat/schedstat counters of these names were reverted before 6.16; the
    /// kernel's record is the `sched_move_numa` and `sched_swap_numa` tracepoints.
    Numasim in "numasim" {
        /// Threads moved to an idle CPU (one `sched_move_numa` each).
        numa_task_migrated,
        /// Threads swapped with a thread on the preferred node (two per `sched_swap_numa`).
        numa_task_swapped,
    }
}

counters! {
    /// userfaultfd RWP (7.3), in the `numasim` group, and only in runs that register RWP. The
    /// kernel counts none of these (no vmstat item, no tracepoint).
    UffdRwp in "numasim" {
        /// RWP faults taken (do_uffd_rwp()), sync and async, by CPUs and through GUP.
        uffd_rwp_faults,
        /// Pending NUMA hints (protnone PTEs without `_PAGE_UFFD`) that UFFDIO_RWPROTECT
        /// rewrote, arming or resolving: hinting faults that never come.
        uffd_rwp_hints_lost,
        /// Slow-GUP calls that faulted on a NUMA hint (no `_PAGE_UFFD`) only because
        /// gup_can_follow_protnone() tests VM_UFFD_RWP: 6.12's rule would have followed it.
        uffd_rwp_gup_faults,
        /// Slow-GUP calls that got -EFAULT from a sync RWP fault they could not wait for
        /// (handle_userfault() without FAULT_FLAG_ALLOW_RETRY: VM_FAULT_SIGBUS).
        uffd_rwp_gup_efaults,
    }
}

counters! {
    /// Hinting faults by who took them (`hint_faults_by_source`).
    HintFaultsBySource in "hint_faults_by_source" { cpu, kvm, device, follow_page }
}

counters! {
    /// Hinting faults by the memory tier of the faulting page (`hint_faults_by_tier`): the
    /// kernel counts numa_hint_faults over all nodes only.
    HintFaultsByTier in "hint_faults_by_tier" { toptier, lower }
}

counters! {
    /// Touches of memory, all and node-local, by toucher (for `locality`).
    Touches { cpu, cpu_local, kvm, kvm_local, device, device_local }
}

counters! {
    /// Stale secondary-MMU mappings (`stale`).
    Stale in "stale" {
        /// Largest number of stale entries at any time.
        mappings_max,
        /// Integral of the number of stale entries over simulated time (entry-nanoseconds).
        mapping_ns,
        /// Device or guest accesses through a stale entry.
        accesses,
    }
}

counters! {
    /// KSM (`ksm`): pages merged into a KSM page (a running count; `vmstat.cow_ksm` counts
    /// the writes that unshared one again), pages follow_page() could not follow, and pages
    /// the smart scan passed over (/sys/kernel/mm/ksm/pages_skipped, 6.12).
    Ksm in "ksm" { pages_merged, skipped_protnone, pages_skipped }
}

counters! {
    /// Page aging (`young`).
    Young in "young" {
        /// Pages found young only through a secondary MMU while their PTE was protnone.
        secondary_only_protnone,
    }
}

counters! {
    /// Churn in the notifier-based secondary MMUs, KVM's and the devices' (`secondary_mmu`).
    /// numasim's names: the kernel counts none of these (KVM's own are in [`KvmStat`]).
    /// Entries count in 4 KiB units: a 2 MiB entry is 512.
    SecondaryMmuChurn in "secondary_mmu" {
        /// invalidate_range_start() calls over a range a table maps, by `enum
        /// mmu_notifier_event`: MMU_NOTIFY_PROTECTION_VMA, MMU_NOTIFY_CLEAR, MMU_NOTIFY_UNMAP.
        invalidate_protection_vma,
        invalidate_clear,
        invalidate_unmap,
        /// Valid entries those invalidations zapped.
        entries_zapped,
        /// Secondary faults that mapped an entry an invalidation had zapped.
        entries_refilled,
        /// TLB flushes after an invalidation that zapped entries: KVM's flush of its vCPUs,
        /// a device's IOTLB invalidation.
        tlb_flushes,
        /// IPIs those flushes sent (KVM's to its vCPUs in guest mode).
        flush_ipis,
        /// task_numa_work() calls that claimed a scan (the passes the per-pass rates divide by).
        scan_passes,
        /// NUMA protection changes a table kept its entries through
        /// (`kernel.mmu_notifier_range_numa`, proposed).
        range_numa_kept,
    }
}

impl SecondaryMmuChurn {
    /// Counts one invalidate_range_start() call for `event` on one table.
    pub fn invalidated(&mut self, event: crate::mm::mmu_notifier::MmuNotifyEvent) {
        use crate::mm::mmu_notifier::MmuNotifyEvent::*;
        *match event {
            ProtectionVma => &mut self.invalidate_protection_vma,
            Clear => &mut self.invalidate_clear,
            Unmap => &mut self.invalidate_unmap,
        } += 1;
    }

    /// All invalidate_range_start() calls the tables received.
    pub fn invalidations(&self) -> u64 {
        self.invalidate_protection_vma + self.invalidate_clear + self.invalidate_unmap
    }
}

counters! {
    /// KVM under its own names (`kvm`): the `kvm_unmap_hva_range` tracepoint
    /// (include/trace/events/kvm.h) and the VM statistics `remote_tlb_flush_requests` and
    /// `remote_tlb_flush` (KVM_GENERIC_VM_STATS in include/linux/kvm_host.h), 6.12.118.
    KvmStat in "kvm" { kvm_unmap_hva_range, remote_tlb_flush_requests, remote_tlb_flush }
}

/// Everything a run counts. One resource, so the recorder snapshots it in one read.
#[derive(Resource, Clone, Debug, Default)]
pub struct Counters {
    pub vmstat: VmStat,
    pub numasim: Numasim,
    pub hint_faults_by_source: HintFaultsBySource,
    pub tierstat: TierStat,
    pub file_thp: FileThpStat,
    /// `shmem_enabled` lets a memfd hold THPs: the file THP counters are reported.
    pub file_thp_reported: bool,
    pub hint_faults_by_tier: HintFaultsByTier,
    /// The run is tiered (memory-tiering mode or a CPU-less node): the tiering counters
    /// are reported.
    pub tiered: bool,
    pub touches: Touches,
    pub stale: Stale,
    pub ksm: Ksm,
    pub young: Young,
    pub secondary_mmu: SecondaryMmuChurn,
    pub kvm: KvmStat,
    pub uffd_rwp: UffdRwp,
    /// A VMA is registered for RWP: the `uffd_rwp_*` counters are part of the results.
    pub uffd_rwp_registered: bool,
    /// Current number of stale secondary-MMU entries (a gauge).
    pub stale_mappings: u64,
    /// When `stale_mappings` last changed, for the `stale.mapping_ns` integral.
    pub stale_since: crate::engine::Nanos,
}

impl Counters {
    /// What was counted since `earlier`; the gauge keeps its current value.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            vmstat: self.vmstat.since(&earlier.vmstat),
            numasim: self.numasim.since(&earlier.numasim),
            hint_faults_by_source: self.hint_faults_by_source.since(&earlier.hint_faults_by_source),
            tierstat: self.tierstat.since(&earlier.tierstat),
            file_thp: self.file_thp.since(&earlier.file_thp),
            hint_faults_by_tier: self.hint_faults_by_tier.since(&earlier.hint_faults_by_tier),
            touches: self.touches.since(&earlier.touches),
            stale: self.stale.since(&earlier.stale),
            ksm: self.ksm.since(&earlier.ksm),
            young: self.young.since(&earlier.young),
            secondary_mmu: self.secondary_mmu.since(&earlier.secondary_mmu),
            kvm: self.kvm.since(&earlier.kvm),
            uffd_rwp: self.uffd_rwp.since(&earlier.uffd_rwp),
            ..self.clone()
        }
    }

    /// Adds the stale entry-time since the last change to `stale.mapping_ns`.
    pub fn accrue_stale(&mut self, now: crate::engine::Nanos) -> &mut Self {
        self.stale.mapping_ns += self.stale_mappings * now.saturating_sub(self.stale_since);
        self.stale_since = now;
        self
    }

    /// Sets the number of stale secondary-MMU entries at `now`.
    pub fn set_stale_mappings(&mut self, now: crate::engine::Nanos, n: u64) {
        self.accrue_stale(now);
        self.stale_mappings = n;
        self.stale.mappings_max = self.stale.mappings_max.max(n);
    }

    /// Counts one hinting fault taken by `source`.
    pub fn hint_fault(&mut self, source: Source) {
        let c = &mut self.hint_faults_by_source;
        match source {
            Source::Cpu => c.cpu += 1,
            Source::Kvm => c.kvm += 1,
            Source::Device => c.device += 1,
            Source::FollowPage => c.follow_page += 1,
        }
    }

    /// Counts one hinting fault on a page of the top tier or below it.
    pub fn hint_fault_tier(&mut self, toptier: bool) {
        let c = &mut self.hint_faults_by_tier;
        if toptier {
            c.toptier += 1;
        } else {
            c.lower += 1;
        }
    }

    /// Counts `n` touches by `source`, `local` of them on the toucher's node.
    #[inline]
    pub fn touch(&mut self, source: Source, n: u64, local: u64) {
        let t = &mut self.touches;
        let (all, loc) = match source {
            Source::Cpu | Source::FollowPage => (&mut t.cpu, &mut t.cpu_local),
            Source::Kvm => (&mut t.kvm, &mut t.kvm_local),
            Source::Device => (&mut t.device, &mut t.device_local),
        };
        *all += n;
        *loc += local;
    }
}
