/* The dynamic linker's list of loaded objects (dl_iterate_phdr, a GNU extension), which Swift's Glibc
   module does not carry. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <link.h>

/* dl_iterate_phdr is declared by link.h only for _GNU_SOURCE; declared here as well in case the
   module's features.h was read without it. */
int dl_iterate_phdr(int (*callback)(struct dl_phdr_info *info, size_t size, void *data), void *data);

/* getauxval: where the kernel put the executable's program headers (AT_PHDR). */
#include <sys/auxv.h>
