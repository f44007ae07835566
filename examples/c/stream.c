/* stream.c — streaming generation: each piece of text is printed as soon as the model produces it.
 *   cc -std=c11 stream.c $(pkg-config --cflags --libs lorakit) -o stream && ./stream MODEL.gguf ["question"]
 */
#include <string.h>
#include "example.h"

typedef struct {
    char text[8192]; /* what the callback saw, to compare with the final text */
    size_t len;
    int pieces;
} stream_state;

/* Called with every new piece of text (complete UTF-8). Return 0 to go on, non-zero to stop. */
static int32_t on_piece(const char *piece, int64_t len, int32_t token, void *user) {
    (void)token;
    stream_state *st = user;
    fwrite(piece, 1, (size_t)len, stdout);
    fflush(stdout);
    if (st->len + (size_t)len < sizeof st->text) {
        memcpy(st->text + st->len, piece, (size_t)len);
        st->len += (size_t)len;
    }
    st->pieces++;
    return 0;
}

int main(int argc, char **argv) {
    const char *path = model_path(argc, argv);
    const char *question = argc > 2 ? argv[2] : "What is the capital of France? Answer in one sentence.";
    lk_model *model = NULL;
    lk_context *ctx = NULL;
    TRY(lk_model_load(path, NULL, &model));
    TRY(lk_context_new(model, NULL, &ctx));

    int32_t *prompt = NULL;
    int64_t n = chat_prompt(model, question, &prompt);
    lk_sampler_params sp;
    lk_sampler_params_init(&sp);
    sp.temperature = 0; /* greedy: the same answer every run */
    stream_state st = {0};
    lk_generate_params gp;
    lk_generate_params_init(&gp);
    gp.max_tokens = 48;
    gp.sampler = &sp;
    gp.callback = on_piece;
    gp.user_data = &st;
    lk_generate_result res = {.struct_size = sizeof res};
    char *text = NULL;
    printf("Q: %s\nA: ", question);
    TRY(lk_generate(ctx, prompt, n, &gp, &text, NULL, 0, &res));
    printf("\n[%d prompt tokens, %d generated in %d pieces; %.1f tokens/s]\n", res.n_prompt_tokens, res.n_tokens,
           st.pieces, res.decode_seconds > 0 ? res.n_tokens / res.decode_seconds : 0.0);

    /* The streamed pieces add up to the returned text. */
    int ok = strlen(text) == st.len && memcmp(text, st.text, st.len) == 0 && res.n_tokens > 0;
    if (!ok) fprintf(stderr, "stream: the streamed text differs from the returned text\n");
    lk_string_free(text);
    free(prompt);
    lk_context_free(ctx);
    lk_model_free(model);
    return ok ? 0 : 1;
}
