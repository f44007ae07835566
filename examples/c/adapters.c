/* adapters.c — stack two LoRA adapters on one context, then merge them into a new GGUF model and check
 * that the merged model computes what the stacked adapters compute.
 *   cc -std=c11 adapters.c $(pkg-config --cflags --libs lorakit) -lm -o adapters && ./adapters MODEL.gguf [OUT_DIR]
 */
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include "example.h"

/* Logits of every position of `tokens` ([n, vocab], malloc'ed), from a fresh cache. */
static float *all_logits(lk_context *ctx, const int32_t *tokens, int64_t n, int64_t vocab) {
    float *logits = malloc(sizeof(float) * (size_t)(n * vocab));
    TRY(lk_context_reset(ctx));
    TRY(lk_context_eval(ctx, tokens, n, LK_LOGITS_ALL, logits, n * vocab));
    return logits;
}

/* Largest |a - b| and how many rows agree on their top token. */
static double compare(const float *a, const float *b, int64_t n, int64_t vocab, int *same_top) {
    double worst = 0;
    *same_top = 0;
    for (int64_t r = 0; r < n; r++) {
        int64_t ia = 0, ib = 0;
        for (int64_t v = 0; v < vocab; v++) {
            double d = fabs((double)a[r * vocab + v] - (double)b[r * vocab + v]);
            if (d > worst) worst = d;
            if (a[r * vocab + v] > a[r * vocab + ia]) ia = v;
            if (b[r * vocab + v] > b[r * vocab + ib]) ib = v;
        }
        *same_top += ia == ib;
    }
    return worst;
}

int main(int argc, char **argv) {
    const char *path = model_path(argc, argv);
    const char *out = argc > 2 ? argv[2] : "adapters-run";
    mkdir(out, 0755);
    char style_dir[1024], facts_gguf[1024], merged[1024];
    snprintf(style_dir, sizeof style_dir, "%s/style", out);
    snprintf(facts_gguf, sizeof facts_gguf, "%s/facts.gguf", out);
    snprintf(merged, sizeof merged, "%s/merged.gguf", out);

    lk_model *model = NULL;
    TRY(lk_model_load(path, NULL, &model));
    lk_model_info info = {.struct_size = sizeof info};
    TRY(lk_model_get_info(model, &info));
    int64_t vocab = info.n_vocab;

    /* Two adapters with made-up weights (LK_LORA_INIT_RANDOM: B != 0, so each changes the model), saved in
     * the two file formats and loaded back, as adapters trained elsewhere would be. */
    lk_lora_params lp;
    lk_lora_params_init(&lp);
    lp.rank = 4;
    lp.init = LK_LORA_INIT_RANDOM;
    lk_adapter *made = NULL, *style = NULL, *facts = NULL;
    lp.targets = "q,v";
    lp.seed = 1;
    TRY(lk_adapter_create(model, &lp, &made));
    TRY(lk_adapter_save(made, style_dir, LK_ADAPTER_PEFT)); /* a PEFT folder */
    lk_adapter_free(made);
    lp.targets = "o,down";
    lp.seed = 2;
    TRY(lk_adapter_create(model, &lp, &made));
    TRY(lk_adapter_save(made, facts_gguf, LK_ADAPTER_GGUF)); /* a llama.cpp GGUF LoRA */
    lk_adapter_free(made);
    TRY(lk_adapter_load(model, style_dir, &style));
    TRY(lk_adapter_load(model, facts_gguf, &facts));

    int32_t *prompt = NULL;
    int64_t n = chat_prompt(model, "Write one sentence about the sea.", &prompt);
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = 256;
    lk_context *ctx = NULL;
    TRY(lk_context_new(model, &cp, &ctx));
    float *base = all_logits(ctx, prompt, n, vocab);

    /* Stacked: both attached, each with its own scale. */
    TRY(lk_context_attach_adapter(ctx, style, 0.5f));
    TRY(lk_context_attach_adapter(ctx, facts, 1.0f));
    float *stacked = all_logits(ctx, prompt, n, vocab);

    /* Merged: W' = W + 0.5·s·B·A (style) + 1.0·s·B·A (facts), written as a new GGUF model (f16 weights). */
    lk_adapter *both[2] = {style, facts};
    float scales[2] = {0.5f, 1.0f};
    TRY(lk_model_merge_to_file(model, both, scales, 2, LK_DTYPE_F16, merged));
    lk_model *mm = NULL;
    lk_context *mctx = NULL;
    TRY(lk_model_load(merged, NULL, &mm));
    TRY(lk_context_new(mm, &cp, &mctx));
    float *merged_logits = all_logits(mctx, prompt, n, vocab);

    int top_sb = 0, top_sm = 0;
    double d_base = compare(base, stacked, n, vocab, &top_sb);
    double d_merged = compare(stacked, merged_logits, n, vocab, &top_sm);
    printf("%lld prompt positions, vocabulary %lld\n", (long long)n, (long long)vocab);
    printf("stacked adapters vs base model:   max |Δlogit| %.3f, same top token at %d/%lld positions\n",
           d_base, top_sb, (long long)n);
    printf("merged model vs stacked adapters: max |Δlogit| %.3f, same top token at %d/%lld positions\n",
           d_merged, top_sm, (long long)n);
    printf("wrote %s (PEFT), %s (GGUF LoRA), %s (merged model)\n", style_dir, facts_gguf, merged);

    /* The adapters change the model (by 8.6 here), and the merged file reproduces the stacked adapters up
     * to the rounding of its f16 weights (0.05 here). */
    int ok = d_base > 1.0 && d_merged < 0.1 && top_sm >= n - n / 10;
    if (!ok) fprintf(stderr, "adapters: the merged model does not match the stacked adapters\n");
    free(base);
    free(stacked);
    free(merged_logits);
    free(prompt);
    lk_context_free(mctx);
    lk_model_free(mm);
    lk_context_free(ctx);
    lk_adapter_free(style);
    lk_adapter_free(facts);
    lk_model_free(model);
    return ok ? 0 : 1;
}
