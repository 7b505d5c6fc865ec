// SPDX-License-Identifier: GPL-2.0

//! Rate limiting, for messages that a loop may repeat.
//!
//! C header: [`include/linux/ratelimit.h`](srctree/include/linux/ratelimit.h)
//!
//! C's `dev_info_ratelimited()` keeps one `struct ratelimit_state` per call site in a static.
//! Here the state is a value its owner keeps, usually beside the device it reports about.

use crate::{
    bindings,
    prelude::*,
    str::CStr,
    types::Opaque, //
};

/// A rate limit with the kernel's default interval and burst: 10 events every 5 seconds.
///
/// ```
/// use kernel::{prelude::*, ratelimit::RateLimit};
/// use pin_init::stack_pin_init;
///
/// stack_pin_init!(let limit = RateLimit::new(c"doctest"));
/// let allowed = (0..20).filter(|_| limit.allow()).count();
/// assert_eq!(allowed, 10);
/// ```
///
/// # Invariants
///
/// `state` is an initialised `struct ratelimit_state`.
#[pin_data]
pub struct RateLimit {
    #[pin]
    state: Opaque<bindings::ratelimit_state>,
    name: &'static CStr,
}

// SAFETY: The state is only used through `___ratelimit()`, which takes its lock.
unsafe impl Send for RateLimit {}

// SAFETY: As for `Send`.
unsafe impl Sync for RateLimit {}

impl RateLimit {
    /// A rate limit that allows `DEFAULT_RATELIMIT_BURST` events every
    /// `DEFAULT_RATELIMIT_INTERVAL`. The first [`RateLimit::allow`] of a new interval logs the
    /// events refused in the last one as "`name`: N callbacks suppressed".
    pub fn new(name: &'static CStr) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes; `ratelimit_default_init()` initialises it
            // whole. Its raw spin lock is pinned inside `Self`.
            state <- Opaque::ffi_init(|slot| unsafe { bindings::ratelimit_default_init(slot) }),
            name,
        })
    }

    /// Whether one more event is allowed now; counts it if so, and the ones refused otherwise.
    /// Callable from any context.
    pub fn allow(&self) -> bool {
        // SAFETY: `state` is initialised (type invariant), and `name` is a NUL-terminated string
        // that lives for ever.
        unsafe { bindings::___ratelimit(self.state.get(), self.name.as_char_ptr()) != 0 }
    }
}
