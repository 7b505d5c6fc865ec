// SPDX-License-Identifier: GPL-2.0

//! Memory statistics: the VM event counters and the global memory summary.
//!
//! C headers: [`include/linux/vmstat.h`](srctree/include/linux/vmstat.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! What `/proc/vmstat` and `/proc/meminfo` show, for drivers that report the guest's memory to
//! a hypervisor (the virtio balloon's statistics queue, for one). All counts are in pages unless
//! named otherwise; every value is a racy snapshot, as in C.

use crate::{
    bindings,
    ffi::c_ulong, //
};

/// A VM event counter (`enum vm_event_item`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum VmEvent {
    /// Pages swapped in (`pswpin`).
    SwapIn = bindings::vm_event_item_PSWPIN,
    /// Pages swapped out (`pswpout`).
    SwapOut = bindings::vm_event_item_PSWPOUT,
    /// Major page faults (`pgmajfault`).
    MajorFault = bindings::vm_event_item_PGMAJFAULT,
    /// Page faults (`pgfault`).
    Fault = bindings::vm_event_item_PGFAULT,
    /// Processes killed by the OOM killer (`oom_kill`).
    OomKill = bindings::vm_event_item_OOM_KILL,
    /// Huge pages allocated from the buddy allocator (`htlb_buddy_alloc_success`).
    #[cfg(CONFIG_HUGETLB_PAGE)]
    HugetlbAlloc = bindings::vm_event_item_HTLB_BUDDY_PGALLOC,
    /// Failed huge page allocations from the buddy allocator (`htlb_buddy_alloc_fail`).
    #[cfg(CONFIG_HUGETLB_PAGE)]
    HugetlbAllocFail = bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL,
}

/// A snapshot of every VM event counter, summed over all CPUs.
///
/// Only with `CONFIG_VM_EVENT_COUNTERS`: without it the kernel counts no events.
#[cfg(CONFIG_VM_EVENT_COUNTERS)]
pub struct VmEvents([c_ulong; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize]);

#[cfg(CONFIG_VM_EVENT_COUNTERS)]
impl VmEvents {
    /// Takes a snapshot of the counters.
    pub fn snapshot() -> Self {
        let mut events = Self([0; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize]);
        // SAFETY: `all_vm_events()` writes `NR_VM_EVENT_ITEMS` counters, the array's length.
        unsafe { bindings::all_vm_events(events.0.as_mut_ptr()) };
        events
    }

    /// The value of `event`.
    pub fn get(&self, event: VmEvent) -> u64 {
        self.0[event as usize] as u64
    }

    /// Allocation stalls in every zone (the sum of `allocstall_*`).
    pub fn alloc_stalls(&self) -> u64 {
        let first =
            (bindings::vm_event_item_ALLOCSTALL_NORMAL - bindings::zone_type_ZONE_NORMAL) as usize;
        self.0[first..first + bindings::zone_type___MAX_NR_ZONES as usize]
            .iter()
            .map(|&n| n as u64)
            .sum()
    }
}

/// A global per-node counter (`enum node_stat_item`), summed over all nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum NodeStat {
    /// Page cache pages (`nr_file_pages`).
    FilePages = bindings::node_stat_item_NR_FILE_PAGES,
    /// Pages scanned by kswapd (`pgscan_kswapd`).
    ScanKswapd = bindings::node_stat_item_PGSCAN_KSWAPD,
    /// Pages scanned by direct reclaim (`pgscan_direct`).
    ScanDirect = bindings::node_stat_item_PGSCAN_DIRECT,
    /// Pages reclaimed by kswapd (`pgsteal_kswapd`).
    StealKswapd = bindings::node_stat_item_PGSTEAL_KSWAPD,
    /// Pages reclaimed by direct reclaim (`pgsteal_direct`).
    StealDirect = bindings::node_stat_item_PGSTEAL_DIRECT,
}

impl NodeStat {
    /// The counter's current value.
    pub fn get(self) -> u64 {
        // SAFETY: `self` is a valid `enum node_stat_item`.
        unsafe { bindings::global_node_page_state(self as bindings::node_stat_item) as u64 }
    }
}

/// The global memory summary (`si_meminfo()`), in pages. `MemAvailable` is not part of it, as
/// in C: balloons read it with `balloon::available_pages()` (`si_mem_available()`).
#[derive(Clone, Copy, Debug)]
pub struct MemInfo {
    /// Usable RAM (`MemTotal`).
    pub total: u64,
    /// Free RAM (`MemFree`).
    pub free: u64,
}

impl MemInfo {
    /// Reads the current values.
    pub fn now() -> Self {
        // SAFETY: `sysinfo` is plain data, valid when zeroed.
        let mut info: bindings::sysinfo = unsafe { core::mem::zeroed() };
        // SAFETY: `info` is valid for writes.
        unsafe { bindings::si_meminfo(&mut info) };
        Self {
            total: info.totalram as u64,
            free: info.freeram as u64,
        }
    }
}

#[macros::kunit_tests(rust_kernel_vmstat)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_the_right_way() {
        #[cfg(CONFIG_VM_EVENT_COUNTERS)]
        let before = VmEvents::snapshot();
        let info = MemInfo::now();
        assert!(info.total > 0);
        assert!(info.free <= info.total);
        // Event counters only grow.
        #[cfg(CONFIG_VM_EVENT_COUNTERS)]
        {
            let after = VmEvents::snapshot();
            for e in [VmEvent::SwapIn, VmEvent::Fault, VmEvent::OomKill] {
                assert!(after.get(e) >= before.get(e));
            }
            assert!(after.alloc_stalls() >= before.alloc_stalls());
        }
        assert!(NodeStat::FilePages.get() <= info.total);
    }
}
