/*
 * test_threads.c — lorakit.h's thread-safety promises, with pthreads:
 * - two threads running lk_matmul at once on the default pool get exactly the sequential results;
 * - lk_last_error() is thread-local (and starts empty on a new thread);
 * - handles are process-wide: created on one thread, used and freed on another, created and freed
 *   concurrently without mix-ups; read-only functions run concurrently on one tensor;
 * - lk_set_default_threads may replace the default pool, also while another thread runs an op.
 */
#include "lk_test.h"

#include <dirent.h>
#include <pthread.h>
#include <time.h>

/* Threads of this process right now. */
static int thread_count(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

typedef struct { int64_t m, k, n; int transpose_w; } problem;

typedef struct {
    problem p;
    lk_tensor *x, *w;
    float *expected;      /* sequential result */
    int iterations;
    int mismatches;       /* written by the worker */
    int errors;
} job;

static void job_init(job *j, problem p, uint64_t seed, int iterations) {
    j->p = p;
    float *x = lkt_random_floats(p.m * p.k, seed), *w = lkt_random_floats(p.k * p.n, seed + 1);
    j->x = lkt_tensor2(x, p.m, p.k);
    j->w = p.transpose_w ? lkt_tensor2(w, p.n, p.k) : lkt_tensor2(w, p.k, p.n);
    free(x);
    free(w);
    j->expected = malloc(sizeof(float) * (size_t)(p.m * p.n));
    lk_tensor *out = lkt_zeros2(p.m, p.n);
    EXPECT_OK(lk_matmul(j->x, j->w, p.transpose_w, out));
    EXPECT_OK(lk_tensor_copy_to_f32(out, j->expected, p.m * p.n));
    lk_tensor_free(out);
    j->iterations = iterations;
    j->mismatches = j->errors = 0;
}

static void job_free(job *j) {
    lk_tensor_free(j->x);
    lk_tensor_free(j->w);
    free(j->expected);
}

static void *job_run(void *arg) {
    job *j = arg;
    size_t n = (size_t)(j->p.m * j->p.n);
    float *got = malloc(sizeof(float) * n);
    lk_tensor *out = lkt_zeros2(j->p.m, j->p.n);
    for (int it = 0; it < j->iterations; it++) {
        if (lk_matmul(j->x, j->w, j->p.transpose_w, out) != LK_OK ||
            lk_tensor_copy_to_f32(out, got, (int64_t)n) != LK_OK) {
            j->errors++;
            continue;
        }
        if (memcmp(got, j->expected, sizeof(float) * n) != 0) j->mismatches++;
    }
    lk_tensor_free(out);
    free(got);
    return NULL;
}

static void test_concurrent_matmul_default_pool(void) {
    job a, b;
    job_init(&a, (problem){65, 96, 130, 1}, 11, 40);
    job_init(&b, (problem){33, 200, 47, 0}, 22, 40);
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, job_run, &a) == 0);
    CHECK(pthread_create(&tb, NULL, job_run, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECKF(a.errors == 0 && b.errors == 0, "errors: %d, %d (%s)", a.errors, b.errors, lk_last_error());
    CHECKF(a.mismatches == 0 && b.mismatches == 0, "results differ from the sequential run in %d + %d of %d runs",
           a.mismatches, b.mismatches, a.iterations + b.iterations);
    /* And the sequential result is still what one thread computes afterwards. */
    a.iterations = 1;
    job_run(&a);
    CHECK(a.mismatches == 0 && a.errors == 0);
    job_free(&a);
    job_free(&b);
}

/* Both threads share x and w (read-only use may be concurrent), each with its own out. */
static void test_concurrent_matmul_shared_inputs(void) {
    job a;
    job_init(&a, (problem){48, 128, 96, 1}, 33, 40);
    job b = a;
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, job_run, &a) == 0);
    CHECK(pthread_create(&tb, NULL, job_run, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(a.errors == 0 && b.errors == 0);
    CHECK(a.mismatches == 0 && b.mismatches == 0);
    job_free(&a);
}

/* ------------------------------------------------------------------------------------------------ */

static pthread_barrier_t barrier;

typedef struct {
    lk_dtype bad_dtype;     /* each thread fails with its own unknown dtype */
    char seen_before[256];  /* lk_last_error() on the new thread, before any call */
    char after_own[256];    /* right after its own failure */
    char after_other[256];  /* after the other thread failed too */
    char after_clear[256];  /* after the other thread cleared its error */
    lk_status status;
} err_arg;

static void copy_msg(char *dst, size_t cap) {
    snprintf(dst, cap, "%s", lk_last_error());
}

static void *err_thread(void *p) {
    err_arg *a = p;
    int64_t bs, bb;
    copy_msg(a->seen_before, sizeof a->seen_before);
    pthread_barrier_wait(&barrier);              /* 1: both threads started */
    if (a->bad_dtype == 77) {
        a->status = lk_dtype_info(a->bad_dtype, &bs, &bb);
        copy_msg(a->after_own, sizeof a->after_own);
        pthread_barrier_wait(&barrier);          /* 2: thread 77 failed */
        pthread_barrier_wait(&barrier);          /* 3: thread 88 failed */
        copy_msg(a->after_other, sizeof a->after_other);
        lk_clear_error();
        pthread_barrier_wait(&barrier);          /* 4: thread 77 cleared */
        copy_msg(a->after_clear, sizeof a->after_clear);
    } else {
        pthread_barrier_wait(&barrier);          /* 2 */
        a->status = lk_dtype_info(a->bad_dtype, &bs, &bb);
        copy_msg(a->after_own, sizeof a->after_own);
        pthread_barrier_wait(&barrier);          /* 3 */
        copy_msg(a->after_other, sizeof a->after_other);
        pthread_barrier_wait(&barrier);          /* 4 */
        copy_msg(a->after_clear, sizeof a->after_clear);
    }
    return NULL;
}

static void test_last_error_is_thread_local(void) {
    /* The main thread has its own message, which the workers must not touch. */
    int64_t bs, bb;
    EXPECT_STATUS(lk_dtype_info(55, &bs, &bb), LK_ERR_INVALID_ARGUMENT, "55");
    err_arg a = {.bad_dtype = 77}, b = {.bad_dtype = 88};
    pthread_barrier_init(&barrier, NULL, 2);
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, err_thread, &a) == 0);
    CHECK(pthread_create(&tb, NULL, err_thread, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&barrier);
    CHECKF(strcmp(a.seen_before, "") == 0 && strcmp(b.seen_before, "") == 0,
           "a new thread inherited a message: \"%s\" / \"%s\"", a.seen_before, b.seen_before);
    CHECK(a.status == LK_ERR_INVALID_ARGUMENT && b.status == LK_ERR_INVALID_ARGUMENT);
    CHECKF(strstr(a.after_own, "77") && strstr(b.after_own, "88"), "\"%s\" / \"%s\"", a.after_own, b.after_own);
    CHECKF(strstr(a.after_other, "77") && !strstr(a.after_other, "88"),
           "thread 77 sees \"%s\" after thread 88 failed", a.after_other);
    CHECKF(strstr(b.after_other, "88") && !strstr(b.after_other, "77"), "thread 88 sees \"%s\"", b.after_other);
    CHECKF(strcmp(a.after_clear, "") == 0, "thread 77 after clearing: \"%s\"", a.after_clear);
    CHECKF(strstr(b.after_clear, "88") != NULL, "thread 77's lk_clear_error cleared thread 88's message: \"%s\"",
           b.after_clear);
    CHECKF(strstr(lk_last_error(), "55") != NULL, "main thread's message became \"%s\"", lk_last_error());
}

/* ------------------------------------------------------------------------------------------------ */

typedef struct { lk_tensor *t; lk_status status; int ok; } handoff;

static void *use_and_free(void *p) {
    handoff *h = p;
    float v[3] = {0};
    h->ok = lk_tensor_copy_to_f32(h->t, v, 3) == LK_OK && v[0] == 1 && v[2] == 3;
    h->status = lk_tensor_free(h->t);
    return NULL;
}

static void test_handle_used_and_freed_on_another_thread(void) {
    float v[3] = {1, 2, 3};
    handoff h = {lkt_tensor2(v, 1, 3), -99, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, use_and_free, &h) == 0);
    pthread_join(t, NULL);
    CHECK(h.ok);
    CHECK(h.status == LK_OK);
    EXPECT_STATUS(lk_tensor_free(h.t), LK_ERR_INVALID_HANDLE, "not a live handle");
}

typedef struct { uint64_t seed; int failures; } churn_arg;

static void *churn(void *p) {
    churn_arg *a = p;
    enum { LIVE = 64 };
    lk_tensor *live[LIVE] = {0};
    float vals[LIVE];
    for (int it = 0; it < 20000; it++) {
        int slot = (int)((a->seed = a->seed * 6364136223846793005ull + 1442695040888963407ull) >> 58);
        if (live[slot]) {
            float got = -1;
            if (lk_tensor_copy_to_f32(live[slot], &got, 1) != LK_OK || got != vals[slot]) a->failures++;
            if (lk_tensor_free(live[slot]) != LK_OK) a->failures++;
            live[slot] = NULL;
        } else {
            int64_t shape[1] = {1};
            vals[slot] = (float)it + (float)a->seed * 0.0f + (a->seed & 1 ? 0.5f : 0.25f);
            if (lk_tensor_from_f32(&vals[slot], 1, LK_DTYPE_F32, 1, shape, &live[slot]) != LK_OK) a->failures++;
        }
    }
    for (int i = 0; i < LIVE; i++) lk_tensor_free(live[i]);
    return NULL;
}

static void test_concurrent_create_and_free(void) {
    churn_arg a = {1, 0}, b = {2, 0};
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, churn, &a) == 0);
    CHECK(pthread_create(&tb, NULL, churn, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECKF(a.failures == 0 && b.failures == 0, "%d + %d failures", a.failures, b.failures);
}

typedef struct { lk_tensor *t; int failures; } reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    float buf[4096];
    for (int it = 0; it < 2000; it++) {
        int32_t nd = 0;
        int64_t shape[2], ne, nb;
        lk_dtype d;
        if (lk_tensor_shape(a->t, &nd, shape, 2) != LK_OK || nd != 2 || shape[0] != 64) a->failures++;
        if (lk_tensor_dtype(a->t, &d) != LK_OK || d != LK_DTYPE_F32) a->failures++;
        if (lk_tensor_size(a->t, &ne, &nb) != LK_OK || ne != 4096) a->failures++;
        if (lk_tensor_copy_to_f32(a->t, buf, 4096) != LK_OK || buf[4095] != 4095.0f) a->failures++;
    }
    return NULL;
}

static void test_concurrent_reads_of_one_tensor(void) {
    float *v = malloc(sizeof(float) * 4096);
    for (int i = 0; i < 4096; i++) v[i] = (float)i;
    reader_arg a = {lkt_tensor2(v, 64, 64), 0}, b = a;
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, reader, &a) == 0);
    CHECK(pthread_create(&tb, NULL, reader, &b) == 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(a.failures == 0 && b.failures == 0);
    lk_tensor_free(a.t);
    free(v);
}

/* ------------------------------------------------------------------------------------------------ */

/* Replacing the default pool releases the old one (whose worker threads must shut down cleanly). */
static void test_replace_default_pool(void) {
    for (int i = 0; i < 50; i++) {
        EXPECT_OK(lk_set_default_threads(2));
        EXPECT_OK(lk_set_default_threads(1));
    }
    CHECK(lk_get_default_threads() == 1);
}

/* A replaced pool's worker threads exit: replacing the pool repeatedly does not accumulate threads. */
static void test_replaced_pools_release_their_threads(void) {
    lk_tensor *x = lkt_zeros2(64, 64), *w = lkt_zeros2(64, 64), *o = lkt_zeros2(64, 64);
    EXPECT_OK(lk_set_default_threads(4));
    EXPECT_OK(lk_matmul(x, w, 1, o)); /* the workers are up */
    int base = thread_count();
    for (int i = 0; i < 20; i++) {
        EXPECT_OK(lk_set_default_threads(4));
        EXPECT_OK(lk_matmul(x, w, 1, o));
    }
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL); /* give exiting workers time to go */
    int now = thread_count();
    CHECKF(now <= base + 1, "%d threads with one 4-thread pool, %d after replacing it 20 times", base, now);
    lk_tensor_free(x); lk_tensor_free(w); lk_tensor_free(o);
}

/* stop is read and written with atomics (a volatile int was a data race: make test-tsan). */
typedef struct { int stop; int flips; } flipper_arg;

static void *flipper(void *p) {
    flipper_arg *a = p;
    while (!__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
        if (lk_set_default_threads(1 + (a->flips & 1)) != LK_OK) break;
        a->flips++;
    }
    return NULL;
}

/* "Changing it while another thread runs a tensor op is allowed; that op keeps the pool it started with." */
static void test_set_threads_while_matmul_runs(void) {
    job j;
    job_init(&j, (problem){64, 256, 96, 1}, 44, 200);
    flipper_arg f = {0, 0};
    pthread_t tf, tj;
    CHECK(pthread_create(&tf, NULL, flipper, &f) == 0);
    CHECK(pthread_create(&tj, NULL, job_run, &j) == 0);
    pthread_join(tj, NULL);
    __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
    pthread_join(tf, NULL);
    CHECK(j.errors == 0);
    CHECKF(j.mismatches == 0, "%d of %d results changed while the pool was swapped", j.mismatches, j.iterations);
    CHECK(f.flips > 0);
    job_free(&j);
}

LKT_MAIN("test_threads", NULL,
         TESTCASE(test_concurrent_matmul_default_pool),
         TESTCASE(test_concurrent_matmul_shared_inputs),
         TESTCASE(test_last_error_is_thread_local),
         TESTCASE(test_handle_used_and_freed_on_another_thread),
         TESTCASE(test_concurrent_create_and_free),
         TESTCASE(test_concurrent_reads_of_one_tensor),
         TESTCASE(test_replace_default_pool),
         TESTCASE(test_replaced_pools_release_their_threads),
         TESTCASE(test_set_threads_while_matmul_runs))
