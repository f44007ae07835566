/*
 * lk_test.h — a tiny test harness for the LoRAKit C tests (header-only, one translation unit per test
 * program). Each TEST is a function; it passes when none of its CHECKs failed and it did not SKIP.
 * main() ends with LKT_FINISH(), which prints "RESULT <passed> <failed> <skipped>" for Tests/c/run.sh.
 */
#ifndef LK_TEST_H
#define LK_TEST_H

#define _POSIX_C_SOURCE 200809L /* fork, execv, waitpid, alarm under -std=c11 */
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>

#include <lorakit.h>

/* Whole file as a NUL-terminated buffer (caller frees), or NULL; *len (if given) receives its size. */
static inline char *lk_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = 0;
    if (len) *len = got;
    return buf;
}

/* Write n bytes to path; 0 on success. */
static inline int lk_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

static int lkt_passed, lkt_failed, lkt_skipped;
static int lkt_cur_failures;
static int lkt_cur_skipped;
static const char *lkt_cur_name = "";

#define LKT_FAIL_HEAD() \
    (lkt_cur_failures++, fprintf(stderr, "    %s:%d: [%s] ", __FILE__, __LINE__, lkt_cur_name))

/* CHECK(cond): record a failure (and keep going) when cond is false. */
#define CHECK(cond) \
    do { if (!(cond)) { LKT_FAIL_HEAD(); fprintf(stderr, "CHECK(%s) failed\n", #cond); } } while (0)

/* CHECKF(cond, fmt, ...): same, with a printf-style explanation. */
#define CHECKF(cond, ...) \
    do { if (!(cond)) { LKT_FAIL_HEAD(); fprintf(stderr, "CHECK(%s) failed: ", #cond); \
                        fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

/* EXPECT_STATUS(call, want, substr): the call returns `want`; for an error, lk_last_error() must contain
 * `substr` (pass NULL to skip the message check). Evaluates to nothing; records failures. */
#define EXPECT_STATUS(call, want, substr) \
    lkt_expect_status((call), (want), (substr), #call, __FILE__, __LINE__)

/* EXPECT_OK(call): the call returns LK_OK. */
#define EXPECT_OK(call) lkt_expect_status((call), LK_OK, NULL, #call, __FILE__, __LINE__)

static inline void lkt_expect_status(lk_status got, lk_status want, const char *substr, const char *expr,
                              const char *file, int line) {
    const char *msg = lk_last_error();
    if (got != want) {
        lkt_cur_failures++;
        fprintf(stderr, "    %s:%d: [%s] %s returned %d (%s), expected %d (%s); lk_last_error: \"%s\"\n",
                file, line, lkt_cur_name, expr, (int)got, lk_status_string(got), (int)want,
                lk_status_string(want), msg ? msg : "(NULL)");
        return;
    }
    if (substr && (!msg || !strstr(msg, substr))) {
        lkt_cur_failures++;
        fprintf(stderr, "    %s:%d: [%s] %s: lk_last_error() = \"%s\" does not mention \"%s\"\n", file, line,
                lkt_cur_name, expr, msg ? msg : "(NULL)", substr);
    }
}

/* SKIP(reason): stop the current test and count it as skipped (prints the reason). */
#define SKIP(...) \
    do { lkt_cur_skipped = 1; printf("    skip [%s]: ", lkt_cur_name); printf(__VA_ARGS__); printf("\n"); \
         return; } while (0)

typedef struct { const char *name; void (*fn)(void); } lkt_case;
#define TESTCASE(fn) { #fn, fn }

/* Run one test in this process; exit status 0 = passed, 1 = failed, 77 = skipped. */
static int lkt_run_here(const lkt_case *c) {
    lkt_cur_name = c->name;
    lkt_cur_failures = 0;
    lkt_cur_skipped = 0;
    c->fn();
    fflush(stdout);
    fflush(stderr);
    return lkt_cur_failures ? 1 : lkt_cur_skipped ? 77 : 0;
}

/*
 * main() of a test program: `prog` runs every case, each in a fresh child process (fork + exec of
 * /proc/self/exe, so a crash or hang fails one test, not the program, and every test sees a fresh
 * library state); `prog --run NAME` runs one case in-process (handy under gdb). A case that takes
 * longer than LKT_TIMEOUT seconds is killed and fails. Prints "RESULT <passed> <failed> <skipped>".
 */
#ifndef LKT_TIMEOUT
#define LKT_TIMEOUT 120
#endif
static int lkt_main(int argc, char **argv, const char *title, void (*setup)(void), const lkt_case *cases,
                    size_t n) {
    if (argc == 3 && strcmp(argv[1], "--run") == 0) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(cases[i].name, argv[2]) == 0) {
                alarm(LKT_TIMEOUT);
                if (setup) setup();
                return lkt_run_here(&cases[i]);
            }
        fprintf(stderr, "no test named %s\n", argv[2]);
        return 2;
    }
    printf("%s (LoRAKit %s, ABI %d)\n", title, lk_version_string(), lk_abi_version());
    for (size_t i = 0; i < n; i++) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            char *args[] = {argv[0], "--run", (char *)cases[i].name, NULL};
            execv("/proc/self/exe", args);
            _exit(3);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid) {
            printf("  FAIL %s (cannot start: fork/waitpid failed)\n", cases[i].name);
            lkt_failed++;
            continue;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            lkt_passed++;
            printf("  ok   %s\n", cases[i].name);
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
            lkt_skipped++;
            printf("  SKIP %s\n", cases[i].name);
        } else if (WIFEXITED(status)) {
            lkt_failed++;
            printf("  FAIL %s\n", cases[i].name);
        } else {
            lkt_failed++;
            int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
            printf("  FAIL %s (CRASHED: killed by signal %d%s)\n", cases[i].name, sig,
                   sig == SIGALRM ? ", timed out" : "");
        }
    }
    printf("RESULT %d %d %d\n", lkt_passed, lkt_failed, lkt_skipped);
    return lkt_failed ? 1 : 0;
}

/* LKT_MAIN("title", setup_function_or_NULL, TESTCASE(a), TESTCASE(b), ...) defines main(). The setup
 * function runs in each child before its test. */
#define LKT_MAIN(title, setup, ...)                                                                  \
    int main(int argc, char **argv) {                                                                \
        static const lkt_case cases_[] = {__VA_ARGS__};                                              \
        return lkt_main(argc, argv, title, setup, cases_, sizeof cases_ / sizeof cases_[0]);         \
    }

/* ------------------------------------------------------------------------------------------------ */
/* Helpers shared by the test programs.                                                             */
/* ------------------------------------------------------------------------------------------------ */

/* Deterministic values in [-1, 1). */
static inline float lkt_rand(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static inline float *lkt_random_floats(int64_t n, uint64_t seed) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = lkt_rand(&seed);
    return p;
}

/* A new f32 tensor from values (aborts the program on failure: only for setup). */
static inline lk_tensor *lkt_tensor2(const float *data, int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols};
    lk_tensor *t = NULL;
    lk_status s = lk_tensor_from_f32(data, rows * cols, LK_DTYPE_F32, 2, shape, &t);
    if (s != LK_OK) {
        fprintf(stderr, "setup: lk_tensor_from_f32 [%lld, %lld] failed: %s\n", (long long)rows, (long long)cols,
                lk_last_error());
        exit(2);
    }
    return t;
}

static inline lk_tensor *lkt_zeros2(int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols};
    lk_tensor *t = NULL;
    if (lk_tensor_new(LK_DTYPE_F32, 2, shape, &t) != LK_OK) {
        fprintf(stderr, "setup: lk_tensor_new failed: %s\n", lk_last_error());
        exit(2);
    }
    return t;
}

/* Naive reference: out[M,N] = x[M,K] · (transpose_w ? wᵀ (w [N,K]) : w (w [K,N])), double accumulation. */
static inline void lkt_ref_matmul(const float *x, const float *w, int transpose_w, int64_t m, int64_t k,
                                  int64_t n, float *out, float *abs_bound) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0, mag = 0;
            for (int64_t p = 0; p < k; p++) {
                float wv = transpose_w ? w[j * k + p] : w[p * n + j];
                acc += (double)x[i * k + p] * wv;
                mag += fabs((double)x[i * k + p] * wv);
            }
            out[i * n + j] = (float)acc;
            if (abs_bound) abs_bound[i * n + j] = (float)mag;
        }
}

#endif /* LK_TEST_H */
