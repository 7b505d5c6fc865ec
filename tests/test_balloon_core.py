# SPDX-License-Identifier: GPL-2.0
"""Accounting of the balloon core (mm/balloon.c) itself, observed through
the simulated balloon. Own module, hence own guest: a test here leaves the
guest's nr_balloon_pages wrong for good."""

import pytest

from test_balloon_sim import (  # noqa: F401 (sim is a fixture)
    SIM,
    fragment_inflate_compact,
    sim,
    stats,
)

BALLOON_OPTS = None
GUEST_MEM = "1G"  # every size is the guest's own (conftest.guest_mem)


def test_deflating_migrations_keep_nr_balloon_pages_right(sim):
    """A host that takes the old page back but refuses the new one: each such
    migration shrinks the balloon by a page. The Rust count follows; the
    test asserts that /proc/vmstat does too."""
    sim.sh(f"echo deflate > {SIM}/host")
    before, after = fragment_inflate_compact(sim)
    st = stats(sim)
    print(f"vmstat before {before}, after {after}; balloon {st}")
    n = st["deflated_by_migration"]
    assert n > 0 and st["migrated"] == 0
    assert after["balloon_deflate"] - before["balloon_deflate"] == n
    assert st["pages"] == before["nr_balloon_pages"] - n
    sim.sh(f"echo migrate > {SIM}/host")
    if after["nr_balloon_pages"] != st["pages"]:
        # Known: the -ENOENT path of balloon_page_migrate() counts
        # BALLOON_DEFLATE and fixes the managed page count, but never
        # decrements NR_BALLOON_PAGES. Everything else above held.
        pytest.xfail(f"mm/balloon.c: nr_balloon_pages stays {after['nr_balloon_pages']} "
                     f"after {n} pages left the balloon by -ENOENT migration; "
                     f"the balloon holds {st['pages']}")
