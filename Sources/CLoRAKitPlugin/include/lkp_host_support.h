/* The parts of the plugin host that are simplest in C: the per-thread error a plugin reports through
 * host->set_error (copied at once, so the plugin keeps ownership of its buffer), and calling the plugin's
 * parallel_for task. Used only by LoRAKitModel's plugin host. */
#ifndef LKP_HOST_SUPPORT_H
#define LKP_HOST_SUPPORT_H
#include <stdint.h>
#include "../../../Include/lorakit_plugin.h"

/* host->set_error: copy message (NULL: "(null message)") into this thread's error slot (truncated to
 * 4095 bytes at a UTF-8 boundary). */
void lkph_set_error(const char *message);
/* Forget this thread's error. The host calls it before every plugin call. */
void lkph_clear_error(void);
/* This thread's error since the last clear, or NULL when the plugin set none. Valid until the next call
 * of lkph_set_error / lkph_clear_error on this thread. */
const char *lkph_error(void);

/* The file of the binary holding the host (liblorakit.so, or the program it is linked into), or NULL. */
const char *lkph_image_path(void);

/* Call a plugin's parallel_for task (a C function pointer the Swift side holds as a raw pointer). */
static inline void lkph_call_task(void (*task)(void *, int32_t, int32_t), void *user, int32_t index, int32_t count) {
    task(user, index, count);
}
#endif
