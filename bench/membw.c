/* Plain memory read bandwidth: T threads each sum a contiguous slice of a 1 GiB buffer (AVX2 loads,
 * 4 independent accumulators), repeated; reports the best GB/s over the repetitions.
 *
 * Build and run (x86_64; on arm64 drop -mavx2):
 *     gcc -O3 -mavx2 -pthread bench/membw.c -o /tmp/membw && /tmp/membw 2     # 2 threads
 *     /tmp/membw 1                                                             # 1 thread
 * Optional second argument: buffer size in MiB (default 1024). A small buffer (e.g. 1 MiB) measures
 * cache bandwidth instead of DRAM.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>

typedef struct { const float *p; size_t n; int reps; double sink; } job_t;

static pthread_barrier_t barrier;

static void *work(void *arg) {
    job_t *j = arg;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    pthread_barrier_wait(&barrier);
    for (int r = 0; r < j->reps; r++) {
        for (size_t i = 0; i + 32 <= j->n; i += 32) {
            a0 = _mm256_add_ps(a0, _mm256_load_ps(j->p + i));
            a1 = _mm256_add_ps(a1, _mm256_load_ps(j->p + i + 8));
            a2 = _mm256_add_ps(a2, _mm256_load_ps(j->p + i + 16));
            a3 = _mm256_add_ps(a3, _mm256_load_ps(j->p + i + 24));
        }
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    j->sink = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    if (threads < 1 || threads > 64 || mib < 1) { fprintf(stderr, "usage: membw [threads] [MiB]\n"); return 2; }
    size_t bytes = mib << 20, n = bytes / sizeof(float);
    float *buf = aligned_alloc(64, bytes);
    if (!buf) { perror("alloc"); return 1; }
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023) * 1e-3f;  /* touch every page */
    int reps = mib >= 256 ? 1 : (int)(1024 / mib);
    double best = 0;
    for (int trial = 0; trial < 5; trial++) {
        pthread_t th[64];
        job_t jobs[64];
        pthread_barrier_init(&barrier, NULL, (unsigned)threads + 1);
        for (int t = 0; t < threads; t++) {
            size_t lo = n / threads * t, hi = t == threads - 1 ? n : n / threads * (t + 1);
            jobs[t] = (job_t){ buf + lo, hi - lo, reps, 0 };
            pthread_create(&th[t], NULL, work, &jobs[t]);
        }
        double t0 = now();
        pthread_barrier_wait(&barrier);
        for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
        double dt = now() - t0;
        pthread_barrier_destroy(&barrier);
        double gbs = (double)bytes * reps / dt / 1e9;
        if (gbs > best) best = gbs;
        double s = 0;
        for (int t = 0; t < threads; t++) s += jobs[t].sink;
        if (s == 12345.678) printf("!");
    }
    printf("membw: %d thread(s), %zu MiB: best %.2f GB/s\n", threads, mib, best);
    free(buf);
    return 0;
}
