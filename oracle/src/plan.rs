//! A resolved numasim config as the guest's [`Plan`]: thread blocks expanded, slices cut,
//! initial CPUs chosen as numasim's placer chooses them, knobs turned into file writes.

use guest::{
    ActionKind, ActionPlan, Pattern, Plan, ProcessPlan, RemoteCaller, RemotePath, SmmuKind, SmmuPlan, ThreadPlan,
    Touch, VmaPlan,
};
use sim_core::config::{
    Access, Config, DeviceConfig, DeviceMode, GupContext, GupPath, HOT_THRESHOLD_MS, HugepageAdvice, MachineConfig,
    MainThread, NotifierMode, PROMOTE_RATE_LIMIT_MBPS, PatternKind, ShmemEnabled, Syscall, Thp, ThreadConfig, VmConfig,
    VmaConfig,
};

use workloads::Placer;

use sim_core::units::PAGES_PER_MIB;

use crate::OracleError;

/// The scan knobs live in debugfs on both kernels (kernel/sched/debug.c).
const NUMA_DEBUGFS: &str = "/sys/kernel/debug/sched/numa_balancing";
const NUMA_BALANCING: &str = "/proc/sys/kernel/numa_balancing";

/// A VM's starting state that only the model can set: the guest boots with an empty EPT and
/// the scanner at the start of the mm, as every process starts.
fn refuse_model_only_vm_state(c: &Config) -> Result<(), OracleError> {
    for (i, vm) in c.vm.iter().enumerate() {
        let key = if vm.numa_scan_offset_mib > 0 {
            "numa_scan_offset_mib"
        } else if vm.populate_ept {
            "populate_ept"
        } else {
            continue;
        };
        return Err(OracleError::Input(format!(
            "vm[{i}].{key} (`{}`): a real kernel starts a guest's scan at the start of its memory and its \
             EPT empty; leave the key out to run the scenario on a kernel",
            vm.name
        )));
    }
    Ok(())
}

/// The plan for `c`, or why the guest cannot realise it.
pub fn plan_of(c: &Config) -> Result<Plan, OracleError> {
    if let Some((pi, p)) = c.process.iter().enumerate().find(|(_, p)| p.main_thread == MainThread::First) {
        return Err(OracleError::Input(format!(
            "process[{pi}].main_thread = \"first\" (`{}`): the guest runs every configured thread as a \
             clone of an idle main thread; use main_thread = \"idle\" to validate",
            p.name
        )));
    }
    refuse_model_only_vm_state(c)?;
    let m = &c.machine;
    let mut placer = Placer::new(m.nodes, m.cpus_per_node);
    let mut processes: Vec<ProcessPlan> = c
        .process
        .iter()
        .map(|p| ProcessPlan {
            name: p.name.clone(),
            vmas: p.vma.iter().map(vma_plan).collect(),
            threads: p
                .thread
                .iter()
                .flat_map(|t| {
                    let vma = p.vma.iter().position(|v| v.name == t.vma).expect("validated");
                    expand_block(&p.name, t, vma, p.vma[vma].size_mib * PAGES_PER_MIB, m, &mut placer)
                })
                .collect(),
            actions: Vec::new(),
        })
        .collect();
    let mut smmus = Vec::new();
    for vm in &c.vm {
        processes.push(kvm_process(c, vm, processes.len(), &mut smmus, &mut placer));
    }
    let memfds = crate::kinds::assign(c, &mut processes)?;
    for u in &c.userfaultfd {
        let (pi, vi) = locate(c, &u.process, &u.vma);
        processes[pi].vmas[vi].uffd_rwp = Some(u.rwp_async);
    }
    for a in &c.action {
        let (pi, vi) = locate(c, &a.process, &a.vma);
        let size = vma_mib(c, pi, vi);
        let kind = match a.syscall {
            Syscall::Mprotect => ActionKind::Mprotect { protect_ms: a.protect_ms, period_ms: a.period_ms },
            Syscall::Munmap => ActionKind::Munmap,
            Syscall::UffdioRwprotect => ActionKind::Rwprotect { protect_ms: a.protect_ms, period_ms: a.period_ms },
        };
        processes[pi].actions.push(ActionPlan {
            vma: vi,
            first_page: a.offset_mib * PAGES_PER_MIB,
            pages: a.len_mib.unwrap_or(size - a.offset_mib) * PAGES_PER_MIB,
            start_ms: a.start_ms,
            kind,
        });
    }
    let mut remote_callers = Vec::new();
    let mut brd_kib = None;
    for d in &c.device {
        let (pi, vi) = locate(c, &d.process, &d.vma);
        let pages = vma_mib(c, pi, vi) * PAGES_PER_MIB;
        match realisation(c, d, pi, vi, &mut smmus) {
            Realisation::Remote(path) => remote_callers.push(RemoteCaller {
                name: format!("device/{}", d.name),
                node: d.node,
                process: pi,
                vma: vi,
                write: d.access == Access::Write,
                path,
                pattern: pattern(d.pattern, pages, d.hot_fraction, d.hot_probability),
                touch_lines: d.touch_lines,
                think_ns: d.think_ns,
                start_ms: d.start_ms,
                stop_ms: d.stop_ms,
            }),
            Realisation::InProcess(touch) => {
                if matches!(touch, Touch::ODirect { .. }) {
                    brd_kib = Some(crate::RAMDISK_KIB);
                }
                let cpus = driver_cpus(d, &processes[pi], m);
                processes[pi].threads.push(device_thread(d, touch, vi, pages, cpus));
            }
        }
    }
    if smmus.len() > guest::MAX_SMMUS {
        return Err(OracleError::Input(format!(
            "{} secondary MMUs (gupdev devices and VMs): the guest runs at most {}",
            smmus.len(),
            guest::MAX_SMMUS
        )));
    }
    Ok(Plan {
        probe: false,
        seed: c.run.seed,
        duration_ms: c.run.duration_ms,
        sample_ms: c.run.sample_ms,
        nodes: m.nodes,
        cpus_per_node: m.cpus_per_node,
        memory_nodes: m.memory_node.len() as u32,
        writes: writes(c),
        start_writes: vec![(NUMA_BALANCING.into(), c.kernel.numa_balancing.mode().to_string())],
        brd_kib,
        memfds,
        smmus,
        processes,
        remote_callers,
        trace: None,
    })
}

fn vma_plan(v: &VmaConfig) -> VmaPlan {
    VmaPlan {
        name: v.name.clone(),
        pages: v.size_mib * PAGES_PER_MIB,
        populate_node: v.populate_node,
        mergeable: v.mergeable,
        content_classes: v.content_classes,
        hugepage: v.hugepage.map(|h| h == HugepageAdvice::Madvise),
        uffd_rwp: None,
        backing: guest::VmaBacking::Anon,
    }
}

/// A `[[vm]]` as a KVM-like guest-memory toucher: a process whose one VMA `ram` is the guest
/// memory (its backing set by [`crate::kinds::assign`]) and whose vCPU threads touch it through one gupdev secondary MMU (its EPT): a
/// miss maps the page by GUP from the vCPU thread with FOLL_HONOR_NUMA_FAULT when
/// `kvm.honor_numa_fault` says KVM passes it (hva_to_pfn_slow()), FOLL_WRITE for a guest
/// that writes. No guest kernel runs: the vCPUs are the scenario's touch pattern.
fn kvm_process(c: &Config, vm: &VmConfig, pi: usize, smmus: &mut Vec<SmmuPlan>, placer: &mut Placer) -> ProcessPlan {
    let pages = vm.memory_mib * PAGES_PER_MIB;
    let smmu = smmus.len();
    smmus.push(SmmuPlan {
        name: format!("kvm/{}", vm.name),
        kind: SmmuKind::Kvm,
        process: pi,
        vma: 0,
        notifier: notifier_of(c),
        kthread_node: None,
        write: vm.vcpus.write_fraction > 0.0,
        honor_numa_fault: c.kvm.honor_numa_fault,
        pin: false,
    });
    let ram = VmaConfig {
        name: "ram".into(),
        size_mib: vm.memory_mib,
        populate_node: vm.populate_node,
        mergeable: vm.mergeable,
        content_classes: vm.content_classes,
        hugepage: vm.hugepage,
        ..Default::default()
    };
    let mut threads = expand_block(&vm.name, &vm.vcpus, 0, pages, &c.machine, placer);
    for t in &mut threads {
        t.touch = Touch::Smmu { smmu };
    }
    ProcessPlan { name: vm.name.clone(), vmas: vec![vma_plan(&ram)], threads, actions: Vec::new() }
}

/// gupdev's notifier for `kernel.notifier`.
fn notifier_of(c: &Config) -> u32 {
    match c.kernel.notifier {
        NotifierMode::Unconditional => 1,
        NotifierMode::Smart => 2,
    }
}

/// How the guest realises a device.
enum Realisation {
    /// A process of its own on the device's node.
    Remote(RemotePath),
    /// A thread of the owner: bound to the device's node when the I/O must be on the caller's
    /// own mm (O_DIRECT, io_uring), on the owner's first thread's CPUs for a driver in the
    /// owner's context.
    InProcess(Touch),
}

/// `mode = "pin"` is a long-term pin; a notifier device is its `gup_path`. O_DIRECT from a
/// read device writes the buffer to the disk (GUP without FOLL_WRITE), from a write device
/// reads the disk into the buffer (FOLL_WRITE). A `driver` device is a gupdev secondary MMU:
/// a `worker` driver GUPs from a kernel thread on the device's node (any process may hold
/// the device: it gets one of its own), an `owner` driver in the owner's first thread.
fn realisation(c: &Config, d: &DeviceConfig, pi: usize, vi: usize, smmus: &mut Vec<SmmuPlan>) -> Realisation {
    match (d.mode, d.gup_path) {
        (_, GupPath::Driver) => {
            let smmu = smmus.len();
            let worker = d.gup_context == GupContext::Worker;
            let pin = d.mode == DeviceMode::Pin;
            smmus.push(SmmuPlan {
                name: format!("device/{}", d.name),
                kind: SmmuKind::Device,
                process: pi,
                vma: vi,
                notifier: if pin { 0 } else { notifier_of(c) },
                kthread_node: worker.then_some(d.node),
                write: d.access == Access::Write,
                honor_numa_fault: false,
                pin,
            });
            if worker {
                Realisation::Remote(RemotePath::Smmu { smmu })
            } else {
                Realisation::InProcess(Touch::Smmu { smmu })
            }
        }
        (DeviceMode::Pin, _) => Realisation::InProcess(Touch::LongtermPin),
        (DeviceMode::Notifier, GupPath::ProcessVm) => Realisation::Remote(RemotePath::ProcessVm),
        (DeviceMode::Notifier, GupPath::ProcMem) => Realisation::Remote(RemotePath::ProcMem),
        (DeviceMode::Notifier, GupPath::ODirect) => {
            Realisation::InProcess(Touch::ODirect { write_buffer: d.access == Access::Write })
        }
    }
}

/// Where a device thread inside the owner runs: an `owner`-context driver on the owner's
/// first thread's CPUs (numasim runs its GUP there), anything else on the device's node.
fn driver_cpus(d: &DeviceConfig, owner: &ProcessPlan, m: &MachineConfig) -> Vec<u32> {
    let first = owner.threads.iter().find(|t| t.touch == Touch::Cpu);
    match (d.gup_path, d.gup_context, first) {
        (GupPath::Driver, GupContext::Owner, Some(t)) if !t.cpus.is_empty() => t.cpus.clone(),
        (GupPath::Driver, GupContext::Owner, Some(t)) => vec![t.start_cpu],
        _ => (d.node * m.cpus_per_node..(d.node + 1) * m.cpus_per_node).collect(),
    }
}

fn device_thread(d: &DeviceConfig, touch: Touch, vma: usize, pages: u64, cpus: Vec<u32>) -> ThreadPlan {
    ThreadPlan {
        name: format!("device/{}", d.name),
        vma,
        first_page: 0,
        pages,
        pattern: pattern(d.pattern, pages, d.hot_fraction, d.hot_probability),
        touch_lines: d.touch_lines,
        think_ns: d.think_ns,
        write_fraction: 0.0,
        start_ms: d.start_ms,
        stop_ms: d.stop_ms,
        start_cpu: cpus[0],
        cpus,
        touch,
    }
}

/// A process or VM by name, and its VMA (a VM's one VMA is `ram`), as plan indices: VMs
/// come after the processes.
fn locate(c: &Config, process: &str, vma: &str) -> (usize, usize) {
    if let Some(pi) = c.process.iter().position(|p| p.name == process) {
        let vi = c.process[pi].vma.iter().position(|v| v.name == vma).expect("validated: and one of its VMAs");
        return (pi, vi);
    }
    let vm = c.vm.iter().position(|v| v.name == process).expect("validated: devices and actions name a process or vm");
    (c.process.len() + vm, 0)
}

fn vma_mib(c: &Config, pi: usize, vi: usize) -> u64 {
    match c.process.get(pi) {
        Some(p) => p.vma[vi].size_mib,
        None => c.vm[pi - c.process.len()].memory_mib,
    }
}

/// The threads of block `t` as the guest runs them: the model's actors
/// ([`workloads::actors::expand`]) with what the guest needs to touch their pages.
fn expand_block(
    process: &str,
    t: &ThreadConfig,
    vma: usize,
    vma_pages: u64,
    m: &MachineConfig,
    placer: &mut Placer,
) -> Vec<ThreadPlan> {
    workloads::actors::expand(process, t, vma_pages, m, placer)
        .into_iter()
        .map(|a| ThreadPlan {
            name: a.name,
            vma,
            first_page: a.first_page,
            pages: a.pages,
            pattern: pattern(t.pattern, a.pages, t.hot_fraction, t.hot_probability),
            touch_lines: t.touch_lines,
            think_ns: t.think_ns,
            write_fraction: t.write_fraction,
            start_ms: t.start_ms,
            stop_ms: t.stop_ms,
            start_cpu: a.start_cpu,
            cpus: a.cpus.unwrap_or_default(),
            touch: Touch::Cpu,
        })
        .collect()
}

fn pattern(kind: PatternKind, len: u64, hot_fraction: f64, hot_probability: f64) -> Pattern {
    match kind {
        PatternKind::Uniform => Pattern::Uniform,
        PatternKind::Sequential => Pattern::Sequential,
        PatternKind::HotCold => {
            Pattern::HotCold { hot_pages: workloads::pattern::hot_pages(len, hot_fraction), hot_probability }
        }
    }
}

/// The sysctl, debugfs and sysfs writes that set the kernel up as the config says. THP is
/// always written (Debian defaults to `always`, numasim to `never`).
fn writes(c: &Config) -> Vec<(String, String)> {
    let k = &c.kernel;
    let knob = |name: &str, v: u64| (format!("{NUMA_DEBUGFS}/{name}"), v.to_string());
    let ksm = |name: &str, v: String| (format!("/sys/kernel/mm/ksm/{name}"), v);
    let mut writes = vec![
        ("/sys/kernel/mm/transparent_hugepage/enabled".into(), thp_name(k.transparent_hugepage).into()),
        knob("scan_delay_ms", k.numa_balancing_scan_delay_ms),
        knob("scan_period_min_ms", k.numa_balancing_scan_period_min_ms),
        knob("scan_period_max_ms", k.numa_balancing_scan_period_max_ms),
        knob("scan_size_mb", k.numa_balancing_scan_size_mb),
        // Off while the processes populate their VMAs; the workload's start turns it on.
        (NUMA_BALANCING.into(), "0".into()),
        // merge_across_nodes can only change while KSM has no merged pages: before `run`.
        ksm("merge_across_nodes", u8::from(c.ksm.merge_across_nodes).to_string()),
        ksm("pages_to_scan", c.ksm.pages_to_scan.to_string()),
        ksm("sleep_millisecs", c.ksm.sleep_millisecs.to_string()),
        ksm("run", u8::from(c.ksm.run).to_string()),
    ];
    // The memory-tiering knobs only where a scenario sets them, so that the other cases'
    // plans stay as they were.
    let tiering = [
        (k.numa_balancing_hot_threshold_ms != HOT_THRESHOLD_MS)
            .then(|| knob("hot_threshold_ms", k.numa_balancing_hot_threshold_ms)),
        (k.numa_balancing_promote_rate_limit_mbps != PROMOTE_RATE_LIMIT_MBPS).then(|| {
            let path = "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps";
            (path.into(), k.numa_balancing_promote_rate_limit_mbps.to_string())
        }),
        k.demotion_enabled.then(|| ("/sys/kernel/mm/numa/demotion_enabled".into(), "true".into())),
    ];
    writes.extend(tiering.into_iter().flatten());
    // Debian boots with `never`: written only when a case asks for memfd THPs, before the
    // memfds are populated.
    if k.shmem_enabled != ShmemEnabled::Never {
        writes.push(("/sys/kernel/mm/transparent_hugepage/shmem_enabled".into(), shmem_enabled_name(k.shmem_enabled)));
    }
    writes
}

/// The value `shmem_enabled` takes, as shmem_parse_huge() reads it.
fn shmem_enabled_name(s: ShmemEnabled) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).expect("a unit variant")
}

fn thp_name(t: Thp) -> &'static str {
    match t {
        Thp::Always => "always",
        Thp::Madvise => "madvise",
        Thp::Never => "never",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each thread's name, start CPU and page count, and each device's name, as the model
    /// builds the scenario and as the guest's plan runs it.
    fn both_sides(c: &Config) -> Option<[Vec<(String, u32, u64)>; 2]> {
        let plan = plan_of(c).ok()?;
        let mut sim = workloads::build(c);
        let w = &mut sim.world;
        let mut model: Vec<(String, u32, u64)> =
            w.query::<&sim_core::sched::Task>().iter(w).map(|t| (t.name.clone(), t.cpu, t.len)).collect();
        model.extend(w.query::<&sim_core::device::Device>().iter(w).map(|d| (format!("device/{}", d.name), 0, 0)));
        let device = |name: &str| name.starts_with("device/");
        let mut guest: Vec<(String, u32, u64)> = plan
            .processes
            .iter()
            .flat_map(|p| &p.threads)
            .map(|t| if device(&t.name) { (t.name.clone(), 0, 0) } else { (t.name.clone(), t.start_cpu, t.pages) })
            .collect();
        guest.extend(plan.remote_callers.iter().map(|r| (r.name.clone(), 0, 0)));
        model.sort();
        guest.sort();
        Some([model, guest])
    }

    /// Every built-in scenario and validation case the guest can run has the same threads
    /// on both sides: the names the per-thread rows of `validate` join on, where each starts
    /// and how many pages it touches, and the same devices.
    #[test]
    fn every_scenario_expands_to_the_same_actors_on_both_sides() {
        let builtin = workloads::catalogue::BUILTIN.iter().map(|(n, _)| workloads::catalogue::resolve(n, &[]));
        let cases = workloads::validation::CASES.iter().map(|(n, _)| workloads::validation::resolve(n, &[]));
        let mut compared = 0;
        for c in builtin.chain(cases) {
            let c = c.expect("the catalogue resolves");
            let Some([model, guest]) = both_sides(&c) else { continue };
            assert_eq!(model, guest, "{}", c.name);
            compared += 1;
        }
        assert!(compared >= 30, "only {compared} scenarios could be planned");
    }

    fn config(text: &str) -> Config {
        let src = sim_core::config::Source { origin: "test".into(), text: text.into() };
        sim_core::config::load(&src, &[]).expect("valid test config")
    }

    #[test]
    fn numa02_expands_to_one_private_slice_per_cpu() {
        let c = config(
            "[machine]\nnodes = 2\ncpus_per_node = 2\n[[process]]\nname = \"p\"\n[[process.vma]]\nname = \"d\"\n\
             size_mib = 8\npopulate_node = 0\n[[process.thread]]\ncount_per_cpu = 1\nvma = \"d\"\nslice = \"private\"\n",
        );
        let plan = plan_of(&c).unwrap();
        let t = &plan.processes[0].threads;
        assert_eq!(t.len(), 4);
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["p/worker/0", "p/worker/1", "p/worker/2", "p/worker/3"]
        );
        assert_eq!(
            t.iter().map(|t| (t.first_page, t.pages)).collect::<Vec<_>>(),
            [(0, 512), (512, 512), (1024, 512), (1536, 512)]
        );
        // Round-robin over the nodes, as numasim places them.
        assert_eq!(t.iter().map(|t| t.start_cpu).collect::<Vec<_>>(), [0, 2, 1, 3]);
        assert_eq!(plan.processes[0].vmas[0].populate_node, Some(0));
    }

    #[test]
    fn thp_follows_the_config_and_vma_advice_becomes_madvise() {
        let c = config(
            "[kernel]\ntransparent_hugepage = \"madvise\"\n[[process]]\nname = \"p\"\n[[process.vma]]\nname = \"d\"\n\
             size_mib = 4\nhugepage = \"madvise\"\n",
        );
        let plan = plan_of(&c).unwrap();
        assert_eq!(plan.writes[0], ("/sys/kernel/mm/transparent_hugepage/enabled".into(), "madvise".into()));
        assert_eq!(plan.processes[0].vmas[0].hugepage, Some(true));
    }

    /// shmem_enabled reaches the guest only when a case sets it, under the kernel's spelling.
    #[test]
    fn shmem_enabled_is_written_only_when_set() {
        let path = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
        let plain = plan_of(&config("[[process]]\nname = \"p\"\n")).unwrap();
        assert!(plain.writes.iter().all(|(p, _)| p != path));
        let c = config("[kernel]\nshmem_enabled = \"within_size\"\n[[process]]\nname = \"p\"\n");
        let plan = plan_of(&c).unwrap();
        assert!(plan.writes.contains(&(path.into(), "within_size".into())), "{:?}", plan.writes);
    }

    /// The tiering knobs reach the guest only when a scenario sets them, with mode 2 itself.
    #[test]
    fn memory_tiering_knobs_are_written_only_when_set() {
        let plain = plan_of(&config("[[process]]\nname = \"p\"\n")).unwrap();
        assert!(plain.writes.iter().all(|(path, _)| !path.contains("hot_threshold") && !path.contains("demotion")));
        let c = config(
            "[kernel]\nnuma_balancing = 2\nnuma_balancing_hot_threshold_ms = 500\n\
             numa_balancing_promote_rate_limit_MBps = 16\ndemotion_enabled = true\n[[process]]\nname = \"p\"\n",
        );
        let plan = plan_of(&c).unwrap();
        assert_eq!(plan.start_writes[0].1, "2");
        let tail: Vec<_> = plan.writes[plain.writes.len()..].iter().map(|(p, v)| (p.as_str(), v.as_str())).collect();
        assert_eq!(
            tail,
            [
                (format!("{NUMA_DEBUGFS}/hot_threshold_ms").as_str(), "500"),
                ("/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps", "16"),
                ("/sys/kernel/mm/numa/demotion_enabled", "true"),
            ]
        );
    }

    /// A `[[userfaultfd]]` registers the VMA in the guest (sync unless `rwp_async`), and an
    /// `uffdio-rwprotect` action keeps its range and schedule.
    #[test]
    fn userfaultfd_rwp_registers_the_vma_and_rwprotect_keeps_its_schedule() {
        let c = config(
            "[kernel]\nversion = \"7.3\"\n[[process]]\nname = \"p\"\n[[process.vma]]\nname = \"a\"\nsize_mib = 4\n\
             [[process.vma]]\nname = \"d\"\nsize_mib = 4\n[[userfaultfd]]\nprocess = \"p\"\nvma = \"d\"\n\
             [[action]]\nsyscall = \"uffdio-rwprotect\"\nprocess = \"p\"\nvma = \"d\"\noffset_mib = 1\n\
             start_ms = 500\nperiod_ms = 1000\nprotect_ms = 0\n",
        );
        let plan = plan_of(&c).unwrap();
        let p = &plan.processes[0];
        assert_eq!((p.vmas[0].uffd_rwp, p.vmas[1].uffd_rwp), (None, Some(false)));
        let a = p.actions[0];
        assert_eq!((a.vma, a.first_page, a.pages, a.start_ms), (1, 256, 768, 500));
        assert_eq!(a.kind, ActionKind::Rwprotect { protect_ms: 0, period_ms: 1000 });
    }

    const OWNER: &str = "[machine]\nnodes = 2\ncpus_per_node = 2\n[[process]]\nname = \"p\"\n[[process.vma]]\n\
        name = \"b\"\nsize_mib = 4\n[[process.thread]]\nvma = \"b\"\ncount = 2\ncpus = [0, 1]\n";

    #[test]
    fn a_driver_device_is_a_gupdev_secondary_mmu_in_its_gup_context() {
        let dev = "[[device]]\nname = \"d\"\nnode = 1\nprocess = \"p\"\nvma = \"b\"\ngup_path = \"driver\"\n";
        let c = config(&format!("{OWNER}[kernel]\nnotifier = \"smart\"\n{dev}access = \"write\"\n"));
        let plan = plan_of(&c).unwrap();
        let m = &plan.smmus[0];
        assert_eq!((m.name.as_str(), m.kind, m.notifier, m.kthread_node), ("device/d", SmmuKind::Device, 2, Some(1)));
        assert!(m.write && !m.pin && !m.honor_numa_fault);
        // A worker driver GUPs from a kthread on its node: any process may hold the device.
        assert_eq!(plan.remote_callers[0].path, RemotePath::Smmu { smmu: 0 });
        // An owner-context driver runs in the owner, on its first thread's CPUs.
        let c = config(&format!("{OWNER}{dev}gup_context = \"owner\"\n"));
        let plan = plan_of(&c).unwrap();
        assert!(plan.remote_callers.is_empty());
        let t = plan.processes[0].threads.last().unwrap();
        assert_eq!((t.name.as_str(), t.touch, t.cpus.as_slice()), ("device/d", Touch::Smmu { smmu: 0 }, &[0, 1][..]));
        assert_eq!((plan.smmus[0].notifier, plan.smmus[0].kthread_node), (1, None));
        // A pinning driver has no notifier: its entries hold FOLL_PIN | FOLL_LONGTERM pins.
        let c = config(&format!("{OWNER}{dev}mode = \"pin\"\n"));
        let m = &plan_of(&c).unwrap().smmus[0];
        assert!(m.pin && m.notifier == 0);
        // The user-space paths stay as they were.
        let c = config(&format!("{OWNER}{}", dev.replace("driver", "process-vm")));
        let plan = plan_of(&c).unwrap();
        assert!(plan.smmus.is_empty() && plan.remote_callers[0].path == RemotePath::ProcessVm);
    }

    #[test]
    fn a_vm_is_a_kvm_like_toucher_whose_vcpus_share_one_secondary_mmu() {
        let vm = "[[vm]]\nname = \"g\"\nmemory_mib = 8\npopulate_node = 0\n[vm.vcpus]\nname = \"vcpu\"\ncount = 2\nnode = 1\n";
        for honor in [true, false] {
            let c = config(&format!("{OWNER}[kvm]\nhonor_numa_fault = {honor}\n{vm}"));
            let plan = plan_of(&c).unwrap();
            let g = &plan.processes[1];
            assert_eq!((g.name.as_str(), g.vmas[0].name.as_str(), g.vmas[0].pages), ("g", "ram", 2048));
            assert_eq!(g.vmas[0].populate_node, Some(0));
            assert_eq!(g.threads.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["g/vcpu/0", "g/vcpu/1"]);
            assert!(g.threads.iter().all(|t| t.touch == Touch::Smmu { smmu: 0 } && t.start_cpu >= 2));
            let m = &plan.smmus[0];
            assert_eq!((m.kind, m.process, m.kthread_node, m.honor_numa_fault), (SmmuKind::Kvm, 1, None, honor));
        }
    }

    /// A VM starting mid-pass or with a full EPT is model-only state: refused with its key.
    #[test]
    fn a_vms_model_only_starting_state_is_refused_with_the_key() {
        let vm = "[[vm]]\nname = \"g\"\nmemory_mib = 8\npopulate_node = 0\n[vm.vcpus]\nname = \"vcpu\"\ncount = 2\nnode = 1\n";
        assert!(plan_of(&config(&format!("{OWNER}{vm}"))).is_ok());
        for (key, line) in
            [("numa_scan_offset_mib", "numa_scan_offset_mib = 4\n"), ("populate_ept", "populate_ept = true\n")]
        {
            let with = vm.replace("populate_node = 0\n", &format!("populate_node = 0\n{line}"));
            let Err(OracleError::Input(msg)) = plan_of(&config(&format!("{OWNER}{with}"))) else {
                panic!("{key} must be refused")
            };
            assert!(msg.contains(&format!("vm[0].{key}")), "{msg}");
        }
    }

    #[test]
    fn a_working_main_thread_is_refused_with_the_key() {
        let c = config("[[process]]\nname = \"p\"\nmain_thread = \"first\"\n");
        let Err(OracleError::Input(msg)) = plan_of(&c) else { panic!("main_thread = first must be refused") };
        assert!(msg.contains("process[0].main_thread"), "{msg}");
    }

    #[test]
    fn the_scan_knobs_go_to_debugfs_thp_is_never_and_balancing_starts_with_the_workload() {
        let c = config("[kernel]\nnuma_balancing_scan_delay_ms = 7\n");
        let plan = plan_of(&c).unwrap();
        let w = &plan.writes;
        assert!(w.contains(&(format!("{NUMA_DEBUGFS}/scan_delay_ms"), "7".into())));
        assert_eq!(w[0], ("/sys/kernel/mm/transparent_hugepage/enabled".into(), "never".into()));
        // Balancing is off while populating and on from the workload's start.
        assert!(w.contains(&(NUMA_BALANCING.into(), "0".into())));
        assert_eq!(plan.start_writes, [(NUMA_BALANCING.to_string(), "1".to_string())]);
    }
}
