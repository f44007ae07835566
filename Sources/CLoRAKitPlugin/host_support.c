/* See include/lkp_host_support.h. */
#define _GNU_SOURCE
#include "lkp_host_support.h"
#include <dlfcn.h>
#include <string.h>

static _Thread_local char error_text[4096];
static _Thread_local int error_set;

void lkph_set_error(const char *message) {
    if (!message) message = "(null message)";
    size_t n = strlen(message);
    if (n > sizeof error_text - 1) {
        n = sizeof error_text - 1;
        while (n > 0 && ((unsigned char)message[n] & 0xC0) == 0x80) n--;  /* do not cut a UTF-8 sequence */
    }
    memcpy(error_text, message, n);
    error_text[n] = 0;
    error_set = 1;
}

void lkph_clear_error(void) {
    error_text[0] = 0;
    error_set = 0;
}

const char *lkph_error(void) { return error_set ? error_text : NULL; }

const char *lkph_image_path(void) {
    Dl_info info;
    if (dladdr((void *)&lkph_image_path, &info) == 0 || !info.dli_fname) return NULL;
    return info.dli_fname;
}
