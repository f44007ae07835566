/* LD_PRELOAD shim for the kill test (Tests/kill/kill_test.py): sleeps LORAKIT_KILL_SLOW_US microseconds
 * (default 2000) before and after every rename, renameat, renameat2 and fsync, so the moments between the
 * steps of an atomic write last long enough for a random SIGKILL to land in them. Behaviour is otherwise
 * unchanged (the real call is made). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static useconds_t slow_us(void) {
    static int v = -1;
    if (v < 0) {
        const char *s = getenv("LORAKIT_KILL_SLOW_US");
        v = s ? atoi(s) : 2000;
    }
    return (useconds_t)v;
}

int rename(const char *a, const char *b) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    usleep(slow_us());
    int r = real(a, b);
    usleep(slow_us());
    return r;
}

int renameat(int fa, const char *a, int fb, const char *b) {
    static int (*real)(int, const char *, int, const char *);
    if (!real) real = (int (*)(int, const char *, int, const char *))dlsym(RTLD_NEXT, "renameat");
    usleep(slow_us());
    int r = real(fa, a, fb, b);
    usleep(slow_us());
    return r;
}

int renameat2(int fa, const char *a, int fb, const char *b, unsigned flags) {
    static int (*real)(int, const char *, int, const char *, unsigned);
    if (!real) real = (int (*)(int, const char *, int, const char *, unsigned))dlsym(RTLD_NEXT, "renameat2");
    usleep(slow_us());
    int r = real(fa, a, fb, b, flags);
    usleep(slow_us());
    return r;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    usleep(slow_us());
    int r = real(fd);
    usleep(slow_us());
    return r;
}
