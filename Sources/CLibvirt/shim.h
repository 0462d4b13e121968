#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

/* virConnectAuthPtrDefault is a mutable global; reach it from C. */
static inline virConnectPtr vs_connect_open(const char *uri, unsigned int flags) {
    return virConnectOpenAuth(uri, virConnectAuthPtrDefault, flags);
}
