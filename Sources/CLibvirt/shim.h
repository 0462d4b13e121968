#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

/* virConnectAuthPtrDefault is a mutable global; reach it from C. */
static inline virConnectPtr vs_connect_open(const char *uri, unsigned int flags) {
    return virConnectOpenAuth(uri, virConnectAuthPtrDefault, flags);
}

#include <pthread.h>
/* glibc declares it only under _GNU_SOURCE, which a module header cannot set for the system headers. */
extern int pthread_setname_np(pthread_t thread, const char *name);

static inline void *vs_event_loop(void *unused) {
    (void)unused;
    for (;;) virEventRunDefaultImpl();
    return NULL;
}

/* Starts the thread that runs libvirt's default event loop for the rest of the process (1 MiB of
   stack, named libvirt-events); 0 or the errno of pthread_create. */
static inline int vs_start_event_thread(void) {
    pthread_attr_t attributes;
    pthread_t thread;
    int rc;
    pthread_attr_init(&attributes);
    pthread_attr_setstacksize(&attributes, 1 << 20);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(&thread, &attributes, vs_event_loop, NULL);
    pthread_attr_destroy(&attributes);
    if (rc == 0) pthread_setname_np(thread, "libvirt-events");
    return rc;
}
