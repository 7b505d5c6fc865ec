// SPDX-License-Identifier: GPL-2.0

//! Migration of balloon pages.
//!
//! Compaction (and memory offlining, and `alloc_contig_range()`) moves balloon pages through
//! their movable_ops: the core isolates a page from the balloon list, allocates a new page and
//! asks the driver, through [`MigrationHandler::migrate`], to swap the two on the host side.
//! What happens to both pages afterwards depends on the [`Migration`] the driver returns; the
//! core does all of it (see `balloon_page_migrate()` in `mm/balloon.c`).

use crate::{
    bindings,
    prelude::*, //
};
use core::{
    marker::PhantomData,
    ptr::NonNull, //
};

use super::{
    page::pfn_of,
    Pfn, //
};

/// How hard the migration core tries, from `enum migrate_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateMode {
    /// Must not block: compaction on behalf of an allocation that cannot wait.
    Async,
    /// May block, but only briefly.
    SyncLight,
    /// May block as long as needed.
    Sync,
}

impl MigrateMode {
    pub(super) fn from_raw(mode: bindings::migrate_mode) -> Self {
        match mode {
            bindings::migrate_mode_MIGRATE_ASYNC => Self::Async,
            bindings::migrate_mode_MIGRATE_SYNC_LIGHT => Self::SyncLight,
            _ => Self::Sync,
        }
    }
}

/// What became of a migration, as the driver reports it to the balloon core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migration {
    /// The host took the new page and gave back the old one: the core puts the new page in the
    /// balloon and frees the old one. The balloon keeps its size.
    Migrated,
    /// The old page was deflated but the new one could not be inflated: the core frees the old
    /// page and the balloon is one page smaller (`-ENOENT` in `mm/balloon.c`).
    Deflated,
    /// Nothing changed, and trying again soon may work, for instance because the driver's lock
    /// was taken (`-EAGAIN`). The page goes back to the balloon if the core gives up.
    Busy,
    /// Nothing changed, and trying again in this pass is pointless (`-EBUSY`). The page goes
    /// back to the balloon.
    Failed,
}

impl Migration {
    pub(super) fn to_errno(self) -> c_int {
        match self {
            Self::Migrated => 0,
            Self::Deflated => ENOENT.to_errno(),
            Self::Busy => EAGAIN.to_errno(),
            Self::Failed => EBUSY.to_errno(),
        }
    }
}

/// A page taking part in a migration, locked by the migration core for the duration of the
/// callback, which its lifetime cannot outlive. The driver may only read its frame number;
/// `R` says which of the two pages it is, so that they cannot be mixed up.
///
/// # Invariants
///
/// `page` points to a valid `struct page` for the whole lifetime `'a`.
pub struct MigrationPage<'a, R> {
    page: NonNull<bindings::page>,
    _p: PhantomData<(&'a bindings::page, R)>,
}

/// Marks the page a balloon page migrates to.
pub enum New {}

/// Marks the balloon page being migrated.
pub enum Old {}

/// The page a balloon page migrates to: freshly allocated. The driver inflates it on the host;
/// whether it joins the balloon is decided by the [`Migration`] returned.
pub type NewPage<'a> = MigrationPage<'a, New>;

/// The balloon page being migrated: isolated from the balloon list. The driver deflates it on
/// the host; the core frees it unless the migration fails.
pub type OldPage<'a> = MigrationPage<'a, Old>;

impl<R> MigrationPage<'_, R> {
    /// # Safety
    ///
    /// `page` must be valid for the lifetime of the returned object.
    pub(super) unsafe fn from_raw(page: NonNull<bindings::page>) -> Self {
        // INVARIANT: Guaranteed by the caller.
        Self {
            page,
            _p: PhantomData,
        }
    }

    /// The page's frame number.
    pub fn pfn(&self) -> Pfn {
        pfn_of(self.page)
    }
}

/// A balloon driver's part in page migration.
///
/// # Context
///
/// [`migrate`](Self::migrate) runs in process context, from compaction or a migration the
/// kernel started for other reasons, with both pages locked and no balloon lock held. It may
/// sleep (the virtio balloon waits for its host there), but it must not wait for anything that
/// holds the balloon's pages while allocating memory: the allocation may be what triggered the
/// compaction. Return [`Migration::Busy`] instead of waiting for such a lock. It may run
/// concurrently with itself and with the driver's inflate and deflate paths.
///
/// It must return promptly once the driver is tearing down: dropping a
/// [`Balloon`](super::Balloon) waits for migrations in flight.
///
/// # Examples
///
/// A host that is told about each swap, and a driver lock that inflating holds across page
/// allocations:
///
/// ```
/// use kernel::balloon::{
///     Balloon, ManagedPages, MigrateMode, Migration, MigrationHandler, NewPage, OldPage,
/// };
/// use kernel::{new_mutex, sync::Mutex};
///
/// #[pin_data]
/// struct Host {
///     #[pin]
///     lock: Mutex<u64>,
/// }
///
/// impl MigrationHandler for Host {
///     fn migrate(&self, new: &NewPage<'_>, old: &OldPage<'_>, _mode: MigrateMode) -> Migration {
///         // Waiting here could deadlock with an inflate that triggered this compaction.
///         let Some(mut swaps) = self.lock.try_lock() else {
///             return Migration::Busy;
///         };
///         // Tell the host: inflate `new.pfn()`, deflate `old.pfn()`.
///         let _ = (new.pfn(), old.pfn());
///         *swaps += 1;
///         Migration::Migrated
///     }
/// }
///
/// let balloon = KBox::pin_init(
///     Balloon::new(ManagedPages::Keep, pin_init!(Host { lock <- new_mutex!(0) })),
///     GFP_KERNEL,
/// )?;
/// assert_eq!(*balloon.handler().lock.lock(), 0);
/// # Ok::<(), Error>(())
/// ```
pub trait MigrationHandler: Send + Sync {
    /// Swaps `old` for `new` on the host side and reports the outcome.
    fn migrate(&self, new: &NewPage<'_>, old: &OldPage<'_>, mode: MigrateMode) -> Migration;
}

/// For balloons whose host cannot move pages: every migration fails, pages stay put.
impl MigrationHandler for () {
    fn migrate(&self, _new: &NewPage<'_>, _old: &OldPage<'_>, _mode: MigrateMode) -> Migration {
        Migration::Failed
    }
}
