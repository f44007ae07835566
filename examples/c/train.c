/* train.c — fine-tune a LoRA adapter with a progress callback, then ask the adapted model a question.
 *   cc -std=c11 train.c $(pkg-config --cflags --libs lorakit) -o train
 *   ./train MODEL.gguf [TRAIN.jsonl VALID.jsonl STEPS OUT_DIR]     (default: the demo's data, 40 steps)
 */
#include <string.h>
#include "example.h"

typedef struct {
    double first_loss, last_loss, valid_loss;
} run_state;

/* Called after every optimizer step. Return 0 to go on, non-zero to stop the run. */
static int32_t on_step(const lk_train_progress *p, void *user) {
    run_state *st = user;
    if (p->step == 1) st->first_loss = p->loss;
    st->last_loss = p->loss;
    int width = 24, done = (int)(width * p->step / p->total_steps);
    double eta = p->elapsed_s / (double)p->step * (double)(p->total_steps - p->step);
    printf("\r[%.*s%.*s] %lld/%lld loss %.4f %.0f tok/s ETA %.0fs", done, "########################",
           width - done, "........................", (long long)p->step, (long long)p->total_steps, p->loss,
           p->tokens_per_s, eta);
    if (p->valid_loss == p->valid_loss) { /* NaN when this step did not validate */
        printf("  valid %.4f", p->valid_loss);
        st->valid_loss = p->valid_loss;
    }
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = model_path(argc, argv);
    const char *data = argc > 2 ? argv[2] : "examples/demo/data/train.jsonl";
    const char *valid = argc > 3 ? argv[3] : "examples/demo/data/valid.jsonl";
    int steps = argc > 4 ? atoi(argv[4]) : 40;
    const char *out = argc > 5 ? argv[5] : "train-run";
    lk_model *model = NULL;
    TRY(lk_model_load(path, NULL, &model));

    lk_train_params tp;
    lk_train_params_init(&tp);
    tp.rank = 16;
    tp.alpha = 32;
    tp.targets = "all-linear";
    tp.lr = 1e-3;
    tp.schedule = LK_SCHEDULE_COSINE;
    tp.warmup_steps = steps / 4;
    tp.steps = steps;
    tp.batch = 8;
    tp.seq = 128;
    tp.out_dir = out; /* checkpoints and the final adapter: OUT/adapter/ (PEFT) */
    lk_trainer *trainer = NULL;
    TRY(lk_trainer_create(model, data, valid, &tp, &trainer));
    double valid_before = 0;
    TRY(lk_trainer_validation_loss(trainer, &valid_before));
    printf("validation loss before training: %.4f\n", valid_before);
    run_state st = {0};
    TRY(lk_trainer_run(trainer, on_step, &st, NULL)); /* validates after the last step (valid_every 0) */
    printf("\ntraining loss %.4f -> %.4f, validation loss %.4f -> %.4f; adapter in %s/adapter/\n", st.first_loss,
           st.last_loss, valid_before, st.valid_loss, out);

    /* The trained adapter, attached to a context. */
    lk_adapter *adapter = NULL;
    lk_context *ctx = NULL;
    TRY(lk_trainer_adapter(trainer, &adapter));
    TRY(lk_context_new(model, NULL, &ctx));
    TRY(lk_context_attach_adapter(ctx, adapter, 1.0f));
    int32_t *prompt = NULL;
    const char *question = "How much does the Zephyrine Pod cost?";
    int64_t n = chat_prompt(model, question, &prompt);
    lk_sampler_params sp;
    lk_sampler_params_init(&sp);
    sp.temperature = 0;
    lk_generate_params gp;
    lk_generate_params_init(&gp);
    gp.max_tokens = 24;
    gp.sampler = &sp;
    char *text = NULL;
    TRY(lk_generate(ctx, prompt, n, &gp, &text, NULL, 0, NULL));
    printf("Q: %s\nA: %s\n", question, text);

    int ok = st.valid_loss > 0 && st.valid_loss < valid_before; /* it learned something that generalizes */
    lk_string_free(text);
    free(prompt);
    lk_context_free(ctx);
    lk_adapter_free(adapter);
    lk_trainer_free(trainer);
    lk_model_free(model);
    if (!ok) fprintf(stderr, "train: the validation loss did not go down\n");
    return ok ? 0 : 1;
}
