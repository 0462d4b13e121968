/* The dynamic linker's list of loaded objects (dl_iterate_phdr, a GNU extension that Swift's Glibc
   module does not carry).

   This header must not define _GNU_SOURCE: glibc's headers then declare some types differently
   (fd_set's member is fds_bits instead of __fds_bits), and a clean build fails with "not present in
   definition of 'fd_set' in module 'CLinkMap'" when this module's copy meets SwiftGlibc's. So
   link.h is not included; the structure dl_iterate_phdr hands its callback is declared here, under
   a name of this module's own, with the layout glibc documents (link.h, struct dl_phdr_info), and
   the function is bound to glibc's symbol by an asm label. */
#include <elf.h>
#include <stddef.h>

/* glibc's struct dl_phdr_info on a 64-bit ELF target. Members after dlpi_phnum exist only if the
   size the callback receives covers them. */
struct clinkmap_phdr_info {
    Elf64_Addr dlpi_addr;
    const char *dlpi_name;
    const Elf64_Phdr *dlpi_phdr;
    Elf64_Half dlpi_phnum;
    unsigned long long int dlpi_adds;
    unsigned long long int dlpi_subs;
    size_t dlpi_tls_modid;
    void *dlpi_tls_data;
};

/* dl_iterate_phdr(3), under this module's name. */
extern int clinkmap_iterate_phdr(int (*callback)(struct clinkmap_phdr_info *info, size_t size, void *data),
                                 void *data) __asm__("dl_iterate_phdr");

/* getauxval: where the kernel put the executable's program headers (AT_PHDR). Declared by
   sys/auxv.h without any feature macro. */
#include <sys/auxv.h>
