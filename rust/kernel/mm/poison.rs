// SPDX-License-Identifier: GPL-2.0

//! What freed pages contain: page poisoning and init-on-free.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! With `page_poison=1` the allocator fills freed pages with [`POISON`] and checks the pattern
//! when it hands them out again; with `init_on_free=1` it zeroes them. Whoever lets a hypervisor
//! discard free pages (which then come back zeroed, or with whatever the hypervisor writes)
//! must know which of the two the kernel expects.

use crate::bindings;

/// The byte freed pages are filled with when page poisoning is on (`PAGE_POISON`).
pub const POISON: u8 = bindings::PAGE_POISON as u8;

/// Whether freed pages are poisoned with [`POISON`] (`page_poisoning_enabled_static()`).
pub fn poisoning_enabled() -> bool {
    // SAFETY: Reads a static key; no requirements.
    unsafe { bindings::page_poisoning_enabled_static() }
}

/// Whether freed pages are zeroed (`want_init_on_free()`).
pub fn init_on_free() -> bool {
    // SAFETY: Reads a static key; no requirements.
    unsafe { bindings::want_init_on_free() }
}
