# SPDX-License-Identifier: GPL-2.0
"""A transitional virtio-balloon-pci device (both the legacy and the modern
interface; Linux drives the modern one): targets for every driver in
conftest.DRIVERS, and the same negotiated features for both. Unload and
statistics go through the modern interface as on the default device
(test_balloon.py); the legacy interface has them in test_legacy_pci.py."""

from pci_transport import (  # noqa: F401
    check_features_match,
    test_inflate_deflate_targets,
)

BALLOON_OPTS = "disable-legacy=off"


def test_features_match_c(guest):
    check_features_match(guest, modern=True)
