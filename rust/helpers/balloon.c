// SPDX-License-Identifier: GPL-2.0

#include <linux/balloon.h>

#ifdef CONFIG_BALLOON
__rust_helper void rust_helper_balloon_devinfo_init(struct balloon_dev_info *balloon)
{
	balloon_devinfo_init(balloon);
}

__rust_helper unsigned long
rust_helper_balloon_isolated_pages(struct balloon_dev_info *balloon)
{
	/*
	 * mm/balloon.c changes isolated_pages with plain increments under its
	 * own lock; this is a snapshot, a race that is tolerated.
	 */
	return data_race(READ_ONCE(balloon->isolated_pages));
}
#endif
