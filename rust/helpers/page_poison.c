// SPDX-License-Identifier: GPL-2.0

#include <linux/mm.h>

__rust_helper bool rust_helper_page_poisoning_enabled_static(void)
{
	return page_poisoning_enabled_static();
}

__rust_helper bool rust_helper_want_init_on_free(void)
{
	return want_init_on_free();
}
