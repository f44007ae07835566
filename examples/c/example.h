/* Shared by the C examples: error checking and the model path. */
#ifndef LORAKIT_EXAMPLE_H
#define LORAKIT_EXAMPLE_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lorakit.h>

/* Print the failing call and LoRAKit's message (lk_last_error names what was wrong), then leave. */
#define TRY(call)                                                                                  \
    do {                                                                                           \
        lk_status s_ = (call);                                                                     \
        if (s_ != LK_OK && s_ != LK_STOPPED) {                                                     \
            fprintf(stderr, "%s failed: %s: %s\n", #call, lk_status_string(s_), lk_last_error());  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* The model: argv[1], else $LORAKIT_MODEL (scripts/fetch_model.sh prints its path). */
static inline const char *model_path(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : getenv("LORAKIT_MODEL");
    if (!m || !*m) {
        fprintf(stderr, "usage: %s MODEL.gguf (or set LORAKIT_MODEL)\n", argv[0]);
        exit(2);
    }
    if (lk_abi_version() != LK_ABI_VERSION) {
        fprintf(stderr, "liblorakit ABI %d, header ABI %d\n", lk_abi_version(), LK_ABI_VERSION);
        exit(1);
    }
    return m;
}

/* Render one user message with the model's chat template and tokenize it into *tokens (malloc'ed). */
static inline int64_t chat_prompt(lk_model *model, const char *question, int32_t **tokens) {
    lk_chat_message msg = {"user", question};
    int64_t need = 0;
    lk_chat_apply(model, &msg, 1, 1, NULL, 0, &need); /* asks for the size: LK_ERR_BUFFER_TOO_SMALL */
    char *text = malloc((size_t)need);
    TRY(lk_chat_apply(model, &msg, 1, 1, text, need, &need));
    int64_t n = 0;
    lk_tokenize(model, text, (int64_t)strlen(text), 0, 1, NULL, 0, &n);
    *tokens = malloc(sizeof(int32_t) * (size_t)n);
    TRY(lk_tokenize(model, text, (int64_t)strlen(text), 0, 1, *tokens, n, &n));
    free(text);
    return n;
}
#endif
