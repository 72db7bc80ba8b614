/* A host whose wall clock is wrong, for tests/farm/test_multihost.py: LD_PRELOAD this library with
 * VOICEFARM_TEST_CLOCK_OFFSET_S=SECONDS and every wall-clock reading of the process and its children (clock_gettime
 * on the CLOCK_REALTIME clocks, gettimeofday, time) is off by that much. The monotonic clocks and every sleep and
 * timed wait are left as the kernel gives them, as on a real host whose clock is set wrong.
 *
 * Why not Debian's faketime: libfaketime 0.9.10 (Debian 12, and the copy python-libfaketime vendors) either fakes
 * the monotonic clock too, and then Python's timed waits block for the offset, or, with FAKETIME_DONT_FAKE_MONOTONIC,
 * turns the absolute deadline of clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which time.sleep uses, into an
 * invalid one (EINVAL). Built by the test with the machine's C compiler:
 *     cc -shared -fPIC -O2 -o clockshim.so clockshim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long offset_s(void) {
    static long offset = 0;
    static int loaded = 0;
    if (!loaded) {
        const char *value = getenv("VOICEFARM_TEST_CLOCK_OFFSET_S");
        offset = value ? strtol(value, NULL, 10) : 0;
        loaded = 1;
    }
    return offset;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *) = NULL;
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int result = real(clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset_s();
    return result;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    static int (*real)(struct timeval *restrict, void *restrict) = NULL;
    if (!real) real = (int (*)(struct timeval *restrict, void *restrict))dlsym(RTLD_NEXT, "gettimeofday");
    int result = real(tv, tz);
    if (result == 0) tv->tv_sec += offset_s();
    return result;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
