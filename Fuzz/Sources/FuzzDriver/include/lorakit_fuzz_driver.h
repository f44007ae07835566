/* The entry of every fuzz target: runs libFuzzer's driver (LLVMFuzzerRunDriver, in the libFuzzer runtime
 * that -sanitize=fuzzer links) with the target's callback. SwiftPM gives an executable target its own
 * `main` (the top-level code of main.swift), so libFuzzer's `main` cannot be used. */
#ifndef LORAKIT_FUZZ_DRIVER_H
#define LORAKIT_FUZZ_DRIVER_H
#include <stddef.h>
#include <stdint.h>

typedef int (*lorakit_fuzz_callback)(const uint8_t *data, size_t size);

/* Run libFuzzer with the process's arguments; returns its exit status. */
int lorakit_fuzz_run(int argc, char **argv, lorakit_fuzz_callback callback);

#endif
