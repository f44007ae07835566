#include "lorakit_fuzz_driver.h"

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

int lorakit_fuzz_run(int argc, char **argv, lorakit_fuzz_callback callback) {
    return LLVMFuzzerRunDriver(&argc, &argv, callback);
}
