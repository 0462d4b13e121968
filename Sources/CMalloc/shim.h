/* glibc's malloc tuning (mallopt), which Swift's Glibc module does not carry. */
#include <malloc.h>
