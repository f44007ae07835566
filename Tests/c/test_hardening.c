/* test_hardening.c — regression tests for what make test-asan found in the C ABI (issue 14). */
#include "lk_test.h"
#include <stddef.h>

/* ASan finding (make test-asan-c, every test of test_train.c): lk_train_params_init_sized copied
 * sizeof(lk_train_params) bytes (the Swift stride, 208) out of a Swift value that holds only its size
 * without tail padding (204): a 4-byte stack-buffer-overflow read, whose garbage landed in the caller's
 * padding. Now the fields are copied and the padding is zeroed. */
static void test_train_params_init_zeroes_tail_padding(void) {
    lk_train_params p;
    memset(&p, 0xAB, sizeof p);
    lk_train_params_init(&p);
    CHECK(p.struct_size == sizeof p);
    size_t end = offsetof(lk_train_params, truncate) + sizeof p.truncate;
    const unsigned char *b = (const unsigned char *)&p;
    int nonzero = 0;
    for (size_t i = end; i < sizeof p; i++) nonzero += b[i] != 0;
    CHECKF(nonzero == 0, "%d of the %zu padding bytes after the last field are not zero", nonzero, sizeof p - end);
    CHECK(p.rank == 8 && p.truncate == LK_TRUNCATE_CUT && p.adam_beta2 == 0.999);
}

/* The first version's size: the fields appended later (from adam_beta1 on) are left as they were. */
static void test_train_params_init_first_version(void) {
    lk_train_params p;
    memset(&p, 0xAB, sizeof p);
    size_t first = offsetof(lk_train_params, adam_beta1);
    lk_train_params_init_sized(&p, first);
    CHECK(p.struct_size == first && p.rank == 8);
    const unsigned char *b = (const unsigned char *)&p;
    int touched = 0;
    for (size_t i = first; i < sizeof p; i++) touched += b[i] != 0xAB;
    CHECKF(touched == 0, "%d bytes after the first version were written", touched);
}

LKT_MAIN("test_hardening", NULL,
         TESTCASE(test_train_params_init_zeroes_tail_padding),
         TESTCASE(test_train_params_init_first_version))
