# SPDX-License-Identifier: GPL-2.0
"""A transitional virtio-balloon-pci device (both the legacy and the modern
interface; Linux drives the modern one): targets, unload and statistics for
every driver in conftest.DRIVERS, and the same negotiated features for
both."""

from pci_transport import (  # noqa: F401
    check_features_match,
    test_guest_stats,
    test_inflate_deflate_targets,
    test_unload_returns_every_page,
)

BALLOON_OPTS = "disable-legacy=off"


def test_features_match_c(guest):
    check_features_match(guest, modern=True)
