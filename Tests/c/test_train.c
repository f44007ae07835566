/*
 * test_train.c — LoRA training through the installed header and library (lk_trainer_*).
 *
 * Model and data: the tiny HF-folder LLaMA of Tests/LoRAKitTests/Fixtures/train/model (vocab 512, width 64,
 * 2 layers, tied embeddings) and Fixtures/train/data/text.jsonl (16 texts). Reference values do not come
 * from the trainer: Fixtures/train/examples.json holds the token ids of every example (made by
 * `tokenizers`), and the validation loss is recomputed from the inference path (lk_context_eval with
 * the trainer's adapter attached, log-softmax in double here).
 */
#include "lk_test.h"

#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>

#define SEQ 64
#define VOCAB 512

static char fx[4096];          /* Fixtures/train */
static char model_dir[4200];
static char text_path[4200];
static char bad_path[4200];

static void setup(void) {
    char dir[2048];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    snprintf(fx, sizeof fx, "%s/../LoRAKitTests/Fixtures/train", dir);
    snprintf(model_dir, sizeof model_dir, "%s/model", fx);
    snprintf(text_path, sizeof text_path, "%s/data/text.jsonl", fx);
    snprintf(bad_path, sizeof bad_path, "%s/data/bad.jsonl", fx);
}

/* ------------------------------------------------------------------------------------------------ */
/* Helpers                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static char tmp_dirs[4][256];
static int n_tmp;

static const char *make_tmp(void) {
    char *d = tmp_dirs[n_tmp++];
    snprintf(d, 256, "/tmp/lorakit-train-XXXXXX");
    if (!mkdtemp(d)) { fprintf(stderr, "setup: mkdtemp failed\n"); exit(2); }
    return d;
}

static void remove_tmp(void) {
    for (int i = 0; i < n_tmp; i++) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dirs[i]);
        if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmp_dirs[i]);
    }
    n_tmp = 0;
}

static lk_model *load_model(void) {
    lk_model *m = NULL;
    if (lk_model_load(model_dir, NULL, &m) != LK_OK || !m) {
        fprintf(stderr, "setup: lk_model_load(%s) failed: %s\n", model_dir, lk_last_error());
        exit(2);
    }
    return m;
}

/* Params used by most tests: every linear module, seq 64, batch 4, 2 threads. */
static void base_params(lk_train_params *p) {
    lk_train_params_init(p);
    p->targets = "all-linear";
    p->lr = 1e-2;
    p->seq = SEQ;
    p->batch = 4;
    p->threads = 2;
}

/* A trainer on `train` (NULL: a manual trainer); setup failures end the test program. */
static lk_trainer *create_trainer(lk_model *m, const char *train, const char *valid, const lk_train_params *p) {
    lk_trainer *t = NULL;
    lk_status s = lk_trainer_create(m, train, valid, p, &t);
    if (s != LK_OK || !t) {
        fprintf(stderr, "setup: lk_trainer_create(%s) failed (%d): %s\n", train ? train : "train_path NULL", s,
                lk_last_error());
        exit(2);
    }
    return t;
}

static lk_trainer *new_trainer(lk_model *m, const char *valid, const lk_train_params *p) {
    return create_trainer(m, text_path, valid, p);
}

/* Every progress report of a run. */
typedef struct {
    int n;
    int stop_at;               /* return non-zero at this step (0: never) */
    lk_train_progress p[64];
} recorder;

static int32_t record(const lk_train_progress *p, void *user) {
    recorder *r = user;
    if (r->n < 64) r->p[r->n] = *p;
    r->n++;
    return r->stop_at && p->step == r->stop_at;
}

/* The token ids of text.jsonl (Fixtures/train/examples.json, made by `tokenizers`), cut to SEQ. */
static int32_t ex_ids[16][SEQ];
static int ex_len[16];
static int n_examples;

static void load_examples(void) {
    if (n_examples) return;
    char p[4300];
    snprintf(p, sizeof p, "%s/examples.json", fx);
    char *json = lk_read_file(p, NULL);
    if (!json) { fprintf(stderr, "setup: cannot read %s\n", p); exit(2); }
    char *cur = strstr(json, "\"text.jsonl\"");
    char *end = cur ? strstr(cur, "\"pc.jsonl\"") : NULL;
    if (!cur || !end) { fprintf(stderr, "setup: examples.json has no text.jsonl section\n"); exit(2); }
    while ((cur = strstr(cur, "\"ids\": [")) && cur < end && n_examples < 16) {
        cur = strchr(cur, '[') + 1;
        int n = 0;
        while (*cur != ']') {
            char *e = NULL;
            long v = strtol(cur, &e, 10);
            if (e == cur) { fprintf(stderr, "setup: bad ids in examples.json\n"); exit(2); }
            if (n < SEQ) ex_ids[n_examples][n] = (int32_t)v;
            n++;
            cur = e;
            while (*cur == ',' || *cur == ' ') cur++;
        }
        ex_len[n_examples++] = n < SEQ ? n : SEQ;
    }
    free(json);
    if (n_examples != 16) { fprintf(stderr, "setup: %d examples in examples.json, expected 16\n", n_examples); exit(2); }
}

/* Mean NLL over every token but the first of each text.jsonl example (the "text" targets), through the
 * inference path: a context with `adapter` attached (NULL: the base model). */
static double reference_loss(lk_model *m, lk_adapter *adapter) {
    load_examples();
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = 128;
    cp.n_threads = 2;
    lk_context *c = NULL;
    EXPECT_OK(lk_context_new(m, &cp, &c));
    if (adapter) EXPECT_OK(lk_context_attach_adapter(c, adapter, 1.0f));
    float *logits = malloc(sizeof(float) * SEQ * VOCAB);
    double sum = 0;
    long count = 0;
    for (int e = 0; e < n_examples; e++) {
        EXPECT_OK(lk_context_reset(c));
        EXPECT_OK(lk_context_eval(c, ex_ids[e], ex_len[e], LK_LOGITS_ALL, logits, SEQ * VOCAB));
        for (int j = 1; j < ex_len[e]; j++) {
            const float *row = logits + (size_t)(j - 1) * VOCAB;
            double mx = row[0];
            for (int v = 1; v < VOCAB; v++) if (row[v] > mx) mx = row[v];
            double z = 0;
            for (int v = 0; v < VOCAB; v++) z += exp(row[v] - mx);
            sum += mx + log(z) - row[ex_ids[e][j]];
            count++;
        }
    }
    free(logits);
    lk_context_free(c);
    return sum / (double)count;
}

/* All logits of example 0 with `adapter` attached (malloc'ed, ex_len[0] × VOCAB). */
static float *logits_with(lk_model *m, lk_adapter *adapter) {
    load_examples();
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = 128;
    cp.n_threads = 2;
    lk_context *c = NULL;
    EXPECT_OK(lk_context_new(m, &cp, &c));
    EXPECT_OK(lk_context_attach_adapter(c, adapter, 1.0f));
    float *out = calloc((size_t)ex_len[0] * VOCAB, sizeof(float));
    EXPECT_OK(lk_context_eval(c, ex_ids[0], ex_len[0], LK_LOGITS_ALL, out, (int64_t)ex_len[0] * VOCAB));
    lk_context_free(c);
    return out;
}

static int same_floats(const float *a, const float *b, int64_t n) { return memcmp(a, b, sizeof(float) * (size_t)n) == 0; }

static int progress_finite(const lk_train_progress *p) {
    return isfinite(p->loss) && isfinite(p->lr) && isfinite(p->grad_norm) && isfinite(p->tokens_per_s) &&
           isfinite(p->epoch) && isfinite(p->elapsed_s);
}

/* ------------------------------------------------------------------------------------------------ */
/* Tests                                                                                             */
/* ------------------------------------------------------------------------------------------------ */

static void test_params_defaults_and_sizes(void) {
    CHECK(lk_sizeof_train_params() == (int64_t)sizeof(lk_train_params));
    CHECK(lk_sizeof_train_progress() == (int64_t)sizeof(lk_train_progress));
    lk_train_params p;
    memset(&p, 0xAB, sizeof p);
    lk_train_params_init(&p);
    CHECK(p.struct_size == sizeof p);
    CHECK(p.rank == 8 && p.alpha == 16.0f && p.use_rslora == 0 && p.targets == NULL);
    CHECK(p.layers == NULL && p.n_layers == 0 && p.dropout == 0.0f && p.init == LK_LORA_INIT_PEFT);
    CHECK(p.lr == 2e-4 && p.weight_decay == 0.01 && p.max_grad_norm == 1.0);
    CHECK(p.schedule == LK_SCHEDULE_CONSTANT && p.warmup_steps == 0 && p.steps == 0 && p.epochs == 1.0);
    CHECK(p.batch == 4 && p.seq == 512 && p.grad_accum == 1 && p.seed == 0 && p.threads == 0);
    CHECK(p.shuffle == 1 && p.completion_only_loss == 1 && p.packing == 0);
    CHECK(p.save_every == 0 && p.keep == 2 && p.valid_every == 0 && p.format == LK_ADAPTER_PEFT);
    CHECK(p.out_dir == NULL && p.resume_dir == NULL && p.init_adapter == NULL && p.log_path == NULL);
    CHECK(p.adam_beta1 == 0.9 && p.adam_beta2 == 0.999 && p.adam_epsilon == 1e-8 && p.truncate == LK_TRUNCATE_CUT);
    lk_train_params_init_sized(NULL, sizeof p);  /* no-op */
    /* A program built against the first header: the old init and a first-version size write only
     * that version's bytes. */
    const size_t first = offsetof(lk_train_params, log_path) + sizeof(const char *);
    unsigned char raw[sizeof(lk_train_params) + 16];
    memset(raw, 0xAB, sizeof raw);
    (lk_train_params_init)((lk_train_params *)raw);
    CHECK(((lk_train_params *)raw)->struct_size == first && ((lk_train_params *)raw)->rank == 8);
    int untouched = 1;
    for (size_t i = first; i < sizeof raw; i++) untouched &= raw[i] == 0xAB;
    CHECK(untouched);
    memset(raw, 0xAB, sizeof raw);
    lk_train_params_init_sized((lk_train_params *)raw, first - 1);  /* below the first version: nothing */
    untouched = 1;
    for (size_t i = 0; i < sizeof raw; i++) untouched &= raw[i] == 0xAB;
    CHECK(untouched);
    memset(raw, 0xAB, sizeof raw);
    lk_train_params_init_sized((lk_train_params *)raw, sizeof raw);  /* larger than the library's: clamped */
    CHECK(((lk_train_params *)raw)->struct_size == sizeof(lk_train_params));
    CHECK(raw[sizeof(lk_train_params)] == 0xAB);
}

/* 30 steps at lr 1e-2 on text.jsonl: the callback sees every step; the loss falls; the validation loss
 * (on the same file) agrees with the inference path before and after; the written adapter equals the
 * trainer's snapshot; the log has a line per step. */
static void test_training_reduces_loss(void) {
    lk_model *m = load_model();
    const char *dir = make_tmp();
    char out[400], log_path[400];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(log_path, sizeof log_path, "%s/train.log", dir);
    lk_train_params p;
    base_params(&p);
    p.steps = 30;
    p.out_dir = out;
    p.log_path = log_path;
    lk_trainer *t = new_trainer(m, text_path, &p);

    int64_t done = -1, total = -1;
    EXPECT_OK(lk_trainer_steps(t, &done, &total));
    CHECK(done == 0 && total == 30);

    /* PEFT initialization (B = 0): the validation loss is the base model's, computed by inference. */
    double v0 = NAN;
    EXPECT_OK(lk_trainer_validation_loss(t, &v0));
    double ref0 = reference_loss(m, NULL);
    printf("    validation loss before: %.6f (inference path %.6f)\n", v0, ref0);
    CHECKF(fabs(v0 - ref0) <= 1e-4 * ref0, "validation loss %.7f vs inference %.7f", v0, ref0);
    CHECKF(v0 > 6.0 && v0 < 8.0, "base loss %g is not the fixture model's ~7", v0);

    recorder r = {0};
    lk_train_progress last = {.struct_size = sizeof last};
    EXPECT_OK(lk_trainer_run(t, record, &r, &last));
    CHECKF(r.n == 30, "the callback saw %d steps, expected 30", r.n);
    for (int i = 0; i < r.n && i < 30; i++) {
        const lk_train_progress *q = &r.p[i];
        CHECKF(q->struct_size == sizeof(lk_train_progress), "step %d: struct_size %u", i + 1, q->struct_size);
        CHECKF(q->step == i + 1 && q->total_steps == 30, "report %d: step %lld of %lld", i, (long long)q->step,
               (long long)q->total_steps);
        CHECKF(progress_finite(q), "step %d: a non-finite field (loss %g)", i + 1, q->loss);
        CHECKF(q->lr == 1e-2, "step %d: lr %g (constant schedule)", i + 1, q->lr);
        CHECKF(q->grad_norm > 0, "step %d: grad norm %g", i + 1, q->grad_norm);
        CHECKF(q->predicted > 0 && q->predicted < q->tokens, "step %d: %lld predicted of %lld tokens", i + 1,
               (long long)q->predicted, (long long)q->tokens);
        /* 4 examples per step; text targets are all tokens but the first of each row. */
        CHECKF(q->tokens - q->predicted == 4, "step %d: %lld tokens, %lld predicted", i + 1, (long long)q->tokens,
               (long long)q->predicted);
        CHECKF(fabs(q->epoch - (i + 1) * 4.0 / 16.0) < 1e-12, "step %d: epoch %g", i + 1, q->epoch);
        CHECKF(i == 29 ? isfinite(q->valid_loss) : isnan(q->valid_loss), "step %d: valid_loss %g", i + 1, q->valid_loss);
        if (i > 0) CHECKF(q->elapsed_s >= r.p[i - 1].elapsed_s, "step %d: elapsed went back", i + 1);
    }
    double first = 0, final = 0;
    for (int i = 0; i < 5; i++) { first += r.p[i].loss / 5; final += r.p[25 + i].loss / 5; }
    printf("    mean loss of steps 1-5: %.4f, of steps 26-30: %.4f\n", first, final);
    CHECKF(final < 0.5 * first, "the loss did not fall: %.4f → %.4f", first, final);
    CHECK(memcmp(&last, &r.p[29], sizeof last) == 0);

    /* The validation at the last step, lk_trainer_validation_loss and the inference path agree. */
    double v1 = NAN;
    EXPECT_OK(lk_trainer_validation_loss(t, &v1));
    lk_adapter *snap = NULL;
    EXPECT_OK(lk_trainer_adapter(t, &snap));
    double ref1 = reference_loss(m, snap);
    printf("    validation loss after: %.6f (inference path %.6f)\n", v1, ref1);
    CHECK(v1 == last.valid_loss);
    CHECKF(fabs(v1 - ref1) <= 1e-4 * ref1, "validation loss %.7f vs inference %.7f", v1, ref1);
    CHECKF(v1 < 0.5 * v0, "validation loss %g did not fall from %g", v1, v0);

    /* The final adapter on disk is the snapshot, bit for bit; the checkpoint is there too. */
    char path[600];
    snprintf(path, sizeof path, "%s/adapter", out);
    lk_adapter *saved = NULL;
    EXPECT_OK(lk_adapter_load(m, path, &saved));
    if (saved && snap) {
        float *a = logits_with(m, snap), *b = logits_with(m, saved);
        CHECK(same_floats(a, b, (int64_t)ex_len[0] * VOCAB));
        free(a); free(b);
    }
    snprintf(path, sizeof path, "%s/latest", out);
    char *latest = lk_read_file(path, NULL);
    CHECKF(latest && strcmp(latest, "checkpoint-30\n") == 0, "latest = \"%s\"", latest ? latest : "(missing)");
    free(latest);

    /* The log: one JSON object per step, with the reported losses. */
    char *log = lk_read_file(log_path, NULL);
    CHECK(log != NULL);
    int lines = 0;
    for (char *line = log; line && *line; lines++) {
        char *nl = strchr(line, '\n');
        char *lp = strstr(line, "\"loss\":");
        CHECKF(lp && (!nl || lp < nl), "log line %d has no loss", lines + 1);
        if (lp && lines < 30) {
            double v = strtod(lp + 7, NULL);
            CHECKF(fabs(v - r.p[lines].loss) <= 1e-12 * fabs(v), "log line %d: loss %.17g, reported %.17g", lines + 1, v,
                   r.p[lines].loss);
        }
        line = nl ? nl + 1 : NULL;
    }
    CHECKF(lines == 30, "the log has %d lines", lines);
    free(log);

    /* Done: a further step is an error; run again only rewrites the final adapter. */
    lk_train_progress extra = {.struct_size = sizeof extra};
    EXPECT_STATUS(lk_trainer_step(t, &extra), LK_ERR_INVALID_ARGUMENT, "all 30 steps are done");
    recorder r2 = {0};
    lk_train_progress last2 = {.struct_size = sizeof last2};
    EXPECT_OK(lk_trainer_run(t, record, &r2, &last2));
    CHECK(r2.n == 0 && last2.step == 30 && last2.total_steps == 30 && isnan(last2.loss));

    lk_adapter_free(snap);
    lk_adapter_free(saved);
    EXPECT_OK(lk_trainer_free(t));
    lk_model_free(m);
    remove_tmp();
}

/* A callback that returns non-zero stops the run: LK_STOPPED, and the checkpoint and final adapter are
 * written at that step. */
static void test_callback_stops(void) {
    lk_model *m = load_model();
    const char *out = make_tmp();
    lk_train_params p;
    base_params(&p);
    p.steps = 10;
    p.out_dir = out;
    p.format = LK_ADAPTER_GGUF;
    lk_trainer *t = new_trainer(m, NULL, &p);
    recorder r = {.stop_at = 3};
    lk_train_progress last = {.struct_size = sizeof last};
    EXPECT_STATUS(lk_trainer_run(t, record, &r, &last), LK_STOPPED, NULL);
    CHECKF(r.n == 3, "the callback was called %d times", r.n);
    CHECK(last.step == 3 && last.total_steps == 10);
    int64_t done = 0;
    EXPECT_OK(lk_trainer_steps(t, &done, NULL));
    CHECK(done == 3);
    char path[400];
    snprintf(path, sizeof path, "%s/latest", out);
    char *latest = lk_read_file(path, NULL);
    CHECKF(latest && strcmp(latest, "checkpoint-3\n") == 0, "latest = \"%s\"", latest ? latest : "(missing)");
    free(latest);
    snprintf(path, sizeof path, "%s/checkpoint-3/adapter_model.safetensors", out);
    CHECK(exists(path));
    /* The GGUF adapter written at the stop holds the step-3 values. */
    snprintf(path, sizeof path, "%s/adapter.gguf", out);
    lk_adapter *saved = NULL, *snap = NULL;
    EXPECT_OK(lk_adapter_load(m, path, &saved));
    EXPECT_OK(lk_trainer_adapter(t, &snap));
    if (saved && snap) {
        float *a = logits_with(m, snap), *b = logits_with(m, saved);
        CHECK(same_floats(a, b, (int64_t)ex_len[0] * VOCAB));
        free(a); free(b);
    }
    /* Without validation data there is no validation loss. */
    double v = 0;
    EXPECT_STATUS(lk_trainer_validation_loss(t, &v), LK_ERR_INVALID_ARGUMENT, "no validation data");
    CHECK(isnan(last.valid_loss));
    /* The stopped run continues where it stopped. */
    recorder r2 = {0};
    EXPECT_OK(lk_trainer_run(t, record, &r2, NULL));
    CHECK(r2.n == 7 && r2.p[0].step == 4 && r2.p[6].step == 10);
    lk_adapter_free(saved);
    lk_adapter_free(snap);
    lk_trainer_free(t);
    lk_model_free(m);
    remove_tmp();
}

/* 10 steps straight vs 5 steps (lk_trainer_step), a checkpoint, a new trainer resuming from it, and 5
 * more (lk_trainer_run): identical losses, learning rates, gradient norms and final adapter. With a
 * cosine schedule and warm-up, shuffling, gradient accumulation and dropout, so that the schedule, the
 * data order and the dropout masks all have to resume at the right place. */
static void resume_params(lk_train_params *p, const char *out) {
    base_params(p);
    p->steps = 10;
    p->schedule = LK_SCHEDULE_COSINE;
    p->warmup_steps = 2;
    p->batch = 3;
    p->grad_accum = 2;
    p->dropout = 0.1f;
    p->seed = 42;
    p->out_dir = out;
}

static void test_resume_matches_uninterrupted(void) {
    lk_model *m = load_model();
    const char *a_dir = make_tmp(), *b_dir = make_tmp();
    lk_train_params p;
    resume_params(&p, a_dir);
    lk_trainer *a = new_trainer(m, NULL, &p);
    recorder ra = {0};
    EXPECT_OK(lk_trainer_run(a, record, &ra, NULL));
    CHECK(ra.n == 10);

    resume_params(&p, b_dir);
    lk_trainer *b1 = new_trainer(m, NULL, &p);
    lk_train_progress got[10];
    for (int i = 0; i < 5; i++) {
        got[i].struct_size = sizeof got[i];
        EXPECT_OK(lk_trainer_step(b1, &got[i]));
    }
    EXPECT_OK(lk_trainer_save_checkpoint(b1));
    EXPECT_OK(lk_trainer_free(b1));

    p.resume_dir = b_dir;
    lk_trainer *b2 = new_trainer(m, NULL, &p);
    int64_t done = 0;
    EXPECT_OK(lk_trainer_steps(b2, &done, NULL));
    CHECKF(done == 5, "resumed at step %lld", (long long)done);
    recorder rb = {0};
    EXPECT_OK(lk_trainer_run(b2, record, &rb, NULL));
    CHECKF(rb.n == 5, "the resumed run reported %d steps", rb.n);
    for (int i = 0; i < 5 && i < rb.n; i++) got[5 + i] = rb.p[i];
    for (int i = 0; i < 10 && ra.n == 10 && rb.n == 5; i++) {
        CHECKF(got[i].step == i + 1, "step %d reported as %lld", i + 1, (long long)got[i].step);
        CHECKF(got[i].loss == ra.p[i].loss, "step %d: loss %.9g, uninterrupted %.9g", i + 1, got[i].loss, ra.p[i].loss);
        CHECKF(got[i].lr == ra.p[i].lr, "step %d: lr %.9g, uninterrupted %.9g", i + 1, got[i].lr, ra.p[i].lr);
        CHECKF(got[i].grad_norm == ra.p[i].grad_norm, "step %d: grad norm %.9g, uninterrupted %.9g", i + 1,
               got[i].grad_norm, ra.p[i].grad_norm);
        CHECKF(got[i].tokens == ra.p[i].tokens, "step %d: tokens %lld vs %lld", i + 1, (long long)got[i].tokens,
               (long long)ra.p[i].tokens);
    }
    /* The schedule really varies (warm-up from 0, then cosine) and training moved the loss. */
    CHECK(ra.p[0].lr == 0 && ra.p[1].lr == 5e-3 && ra.p[2].lr == 1e-2 && ra.p[9].lr < ra.p[5].lr);
    lk_adapter *fa = NULL, *fb = NULL;
    EXPECT_OK(lk_trainer_adapter(a, &fa));
    EXPECT_OK(lk_trainer_adapter(b2, &fb));
    if (fa && fb) {
        float *x = logits_with(m, fa), *y = logits_with(m, fb);
        CHECK(same_floats(x, y, (int64_t)ex_len[0] * VOCAB));
        free(x); free(y);
    }
    lk_adapter_free(fa);
    lk_adapter_free(fb);
    lk_trainer_free(a);
    lk_trainer_free(b2);
    lk_model_free(m);
    remove_tmp();
}

/* Copy the PEFT folder Fixtures/train/text_all/init to `dst` with every A and B value set to 1e20:
 * finite (so it loads) but the forward overflows, so the first step's loss is not finite. */
static void write_exploding_adapter(const char *dst) {
    char src[4400], path[600];
    size_t n = 0;
    snprintf(src, sizeof src, "%s/text_all/init/adapter_config.json", fx);
    char *cfg = lk_read_file(src, &n);
    snprintf(path, sizeof path, "%s/adapter_config.json", dst);
    if (!cfg || lk_write_file(path, cfg, n) != 0) { fprintf(stderr, "setup: cannot copy %s\n", src); exit(2); }
    free(cfg);
    snprintf(src, sizeof src, "%s/text_all/init/adapter_model.safetensors", fx);
    unsigned char *st = (unsigned char *)lk_read_file(src, &n);
    if (!st || n < 8) { fprintf(stderr, "setup: cannot read %s\n", src); exit(2); }
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--) header = header << 8 | st[i];
    float big = 1e20f;
    for (size_t off = 8 + (size_t)header; off + 4 <= n; off += 4) memcpy(st + off, &big, 4);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dst);
    if (lk_write_file(path, st, n) != 0) { fprintf(stderr, "setup: cannot write %s\n", path); exit(2); }
    free(st);
}

/* A step whose loss is not finite fails naming the step; the checkpoints already on disk stay as they
 * were and nothing else is written. */
static void test_nonfinite_loss_keeps_checkpoint(void) {
    lk_model *m = load_model();
    const char *out = make_tmp(), *bad = make_tmp();
    lk_train_params p;
    base_params(&p);
    p.steps = 4;
    p.out_dir = out;
    p.targets = "q,k,v,o,gate,up,down";
    lk_trainer *t = new_trainer(m, NULL, &p);
    for (int i = 0; i < 4; i++) EXPECT_OK(lk_trainer_step(t, NULL));
    EXPECT_OK(lk_trainer_save_checkpoint(t));
    lk_trainer_free(t);
    char latest_path[400], st_path[400];
    snprintf(latest_path, sizeof latest_path, "%s/latest", out);
    snprintf(st_path, sizeof st_path, "%s/checkpoint-4/adapter_model.safetensors", out);
    size_t n_before = 0;
    char *before = lk_read_file(st_path, &n_before);
    CHECK(before != NULL);

    write_exploding_adapter(bad);
    p.init_adapter = bad;
    p.save_every = 1;
    t = new_trainer(m, NULL, &p);
    lk_train_progress last = {.struct_size = sizeof last};
    last.step = -7;
    EXPECT_STATUS(lk_trainer_run(t, NULL, NULL, &last), LK_ERR_INVALID_ARGUMENT, "step 1");
    CHECKF(strstr(lk_last_error(), "loss") != NULL, "message: %s", lk_last_error());
    CHECK(last.step == -7);  /* not written on error */
    int64_t done = -1;
    EXPECT_OK(lk_trainer_steps(t, &done, NULL));
    CHECK(done == 0);
    EXPECT_STATUS(lk_trainer_step(t, NULL), LK_ERR_INVALID_ARGUMENT, "step 1");

    char *latest = lk_read_file(latest_path, NULL);
    CHECKF(latest && strcmp(latest, "checkpoint-4\n") == 0, "latest = \"%s\"", latest ? latest : "(missing)");
    free(latest);
    size_t n_after = 0;
    char *after = lk_read_file(st_path, &n_after);
    CHECK(after && n_after == n_before && memcmp(before, after, n_before) == 0);
    char path[400];
    snprintf(path, sizeof path, "%s/adapter", out);
    CHECK(!exists(path));
    snprintf(path, sizeof path, "%s/checkpoint-1", out);
    CHECK(!exists(path));
    free(before);
    free(after);
    lk_trainer_free(t);
    lk_model_free(m);
    remove_tmp();
}

static void test_bad_params(void) {
    lk_model *m = load_model();
    lk_trainer *t = NULL;
    lk_train_params p;
#define BAD(field_set, status, substr)                                               \
    do {                                                                             \
        base_params(&p);                                                             \
        p.steps = 1;                                                                 \
        field_set;                                                                   \
        t = NULL;                                                                    \
        EXPECT_STATUS(lk_trainer_create(m, text_path, NULL, &p, &t), status, substr); \
        CHECK(t == NULL);                                                            \
    } while (0)
    BAD(p.struct_size = 0, LK_ERR_ABI, "lk_train_params");
    BAD(p.struct_size = 8, LK_ERR_ABI, "lk_train_params");
    BAD(p.struct_size = 100000, LK_ERR_ABI, "lk_train_params");
    BAD(p.adam_beta1 = 1.0, LK_ERR_INVALID_ARGUMENT, "params->adam_beta1");
    BAD(p.adam_beta2 = -0.1, LK_ERR_INVALID_ARGUMENT, "params->adam_beta2");
    BAD(p.adam_epsilon = 0, LK_ERR_INVALID_ARGUMENT, "params->adam_epsilon");
    BAD(p.adam_epsilon = NAN, LK_ERR_INVALID_ARGUMENT, "params->adam_epsilon");
    BAD(p.truncate = 2, LK_ERR_INVALID_ARGUMENT, "params->truncate");
    BAD((p.truncate = LK_TRUNCATE_ERROR, p.seq = 4), LK_ERR_FORMAT, "truncation is set to error");
    /* A caller with the first version of the struct: the fields past its struct_size are not read. */
    base_params(&p);
    p.steps = 1;
    p.struct_size = (uint32_t)(offsetof(lk_train_params, log_path) + sizeof(const char *));
    p.adam_beta1 = 7.0;
    p.truncate = 99;
    t = NULL;
    CHECKF(lk_trainer_create(m, text_path, NULL, &p, &t) == LK_OK && t, "first-version params: %s", lk_last_error());
    lk_trainer_free(t);
    BAD(p.rank = 0, LK_ERR_INVALID_ARGUMENT, "params->rank");
    BAD(p.rank = 5000, LK_ERR_INVALID_ARGUMENT, "params->rank");
    BAD(p.alpha = NAN, LK_ERR_INVALID_ARGUMENT, "params->alpha");
    BAD(p.alpha = -1, LK_ERR_INVALID_ARGUMENT, "params->alpha");
    BAD(p.use_rslora = 2, LK_ERR_INVALID_ARGUMENT, "params->use_rslora");
    BAD(p.targets = "q,bogus", LK_ERR_INVALID_ARGUMENT, "bogus");
    BAD(p.targets = "", LK_ERR_INVALID_ARGUMENT, "params->targets");
    BAD(p.n_layers = 1, LK_ERR_INVALID_ARGUMENT, "params->layers is NULL");
    BAD(p.n_layers = -1, LK_ERR_INVALID_ARGUMENT, "params->n_layers");
    static const int32_t two[2] = {1, 2}, dup[2] = {1, 1};
    BAD((p.layers = two, p.n_layers = 2), LK_ERR_INVALID_ARGUMENT, "params->layers[1] = 2");
    BAD((p.layers = dup, p.n_layers = 2), LK_ERR_INVALID_ARGUMENT, "params->layers[1] = 1");
    BAD(p.dropout = 1, LK_ERR_INVALID_ARGUMENT, "params->dropout");
    BAD(p.init = 7, LK_ERR_INVALID_ARGUMENT, "params->init");
    BAD(p.lr = NAN, LK_ERR_INVALID_ARGUMENT, "params->lr");
    BAD(p.lr = -1e-3, LK_ERR_INVALID_ARGUMENT, "params->lr");
    BAD(p.lr = 0, LK_ERR_INVALID_ARGUMENT, "params->lr");
    BAD(p.lr = INFINITY, LK_ERR_INVALID_ARGUMENT, "params->lr");
    BAD(p.weight_decay = -0.5, LK_ERR_INVALID_ARGUMENT, "params->weight_decay");
    BAD(p.max_grad_norm = NAN, LK_ERR_INVALID_ARGUMENT, "params->max_grad_norm");
    BAD(p.schedule = 3, LK_ERR_INVALID_ARGUMENT, "params->schedule");
    BAD(p.warmup_steps = -1, LK_ERR_INVALID_ARGUMENT, "params->warmup_steps");
    BAD(p.steps = -5, LK_ERR_INVALID_ARGUMENT, "params->steps");
    BAD((p.steps = 0, p.epochs = 0), LK_ERR_INVALID_ARGUMENT, "params->epochs");
    BAD((p.steps = 0, p.epochs = NAN), LK_ERR_INVALID_ARGUMENT, "params->epochs");
    BAD(p.batch = 0, LK_ERR_INVALID_ARGUMENT, "params->batch");
    BAD(p.seq = 1, LK_ERR_INVALID_ARGUMENT, "params->seq");
    BAD(p.grad_accum = 0, LK_ERR_INVALID_ARGUMENT, "params->grad_accum");
    BAD(p.threads = -1, LK_ERR_INVALID_ARGUMENT, "params->threads");
    BAD(p.threads = 513, LK_ERR_INVALID_ARGUMENT, "params->threads");
    BAD(p.shuffle = 2, LK_ERR_INVALID_ARGUMENT, "params->shuffle");
    BAD(p.completion_only_loss = -1, LK_ERR_INVALID_ARGUMENT, "params->completion_only_loss");
    BAD(p.packing = 5, LK_ERR_INVALID_ARGUMENT, "params->packing");
    BAD(p.save_every = -1, LK_ERR_INVALID_ARGUMENT, "params->save_every");
    BAD(p.keep = 0, LK_ERR_INVALID_ARGUMENT, "params->keep");
    BAD(p.valid_every = -2, LK_ERR_INVALID_ARGUMENT, "params->valid_every");
    BAD(p.format = 2, LK_ERR_INVALID_ARGUMENT, "params->format");
    BAD(p.out_dir = "", LK_ERR_INVALID_ARGUMENT, "params->out_dir");
    BAD(p.log_path = "", LK_ERR_INVALID_ARGUMENT, "params->log_path");
    BAD(p.init_adapter = "/nonexistent/adapter", LK_ERR_IO, "/nonexistent/adapter");
    BAD(p.resume_dir = "/nonexistent/run", LK_ERR_INVALID_ARGUMENT, "/nonexistent/run");
#undef BAD
    /* Valid params, and NULL params (defaults), work. */
    base_params(&p);
    p.steps = 1;
    EXPECT_OK(lk_trainer_create(m, text_path, NULL, &p, &t));
    lk_trainer_free(t);
    EXPECT_OK(lk_trainer_create(m, text_path, NULL, NULL, &t));
    int64_t total = 0;
    EXPECT_OK(lk_trainer_steps(t, NULL, &total));
    CHECKF(total == 4, "defaults: %lld steps for one epoch of 16 examples in batches of 4", (long long)total);
    lk_trainer_free(t);
    lk_model_free(m);
}

/* lr_min_ratio: the cosine schedule decays to lr · lr_min_ratio (transformers' cosine_with_min_lr,
 * min_lr_rate m): lr(s) = lr · (0.5 · (1 + cos(π · s / T)) · (1 − m) + m) without warm-up. Out of [0, 1] or
 * with another schedule it is refused, naming the field; a struct that ends before it gets 0. */
static void test_lr_min_ratio(void) {
    const double pi = acos(-1.0);
    lk_model *m = load_model();
    lk_train_params p;
    base_params(&p);
    CHECK(p.lr_min_ratio == 0.0);
    p.steps = 4;
    p.schedule = LK_SCHEDULE_COSINE;
    p.lr_min_ratio = 0.2;
    lk_trainer *t = new_trainer(m, NULL, &p);
    recorder r = {0};
    EXPECT_OK(lk_trainer_run(t, record, &r, NULL));
    CHECK(r.n == 4);
    for (int s = 0; s < r.n && s < 4; s++) {
        double want = 1e-2 * (0.5 * (1 + cos(pi * s / 4.0)) * (1 - 0.2) + 0.2);
        CHECKF(fabs(r.p[s].lr - want) <= 1e-15, "step %d: lr %.17g, formula %.17g", s + 1, r.p[s].lr, want);
    }
    lk_trainer_free(t);
    /* The struct of a program built before lr_min_ratio: the field is not read (plain cosine). */
    p.lr_min_ratio = 5.0;
    p.struct_size = (uint32_t)offsetof(lk_train_params, lr_min_ratio);
    t = new_trainer(m, NULL, &p);
    lk_train_progress last = {.struct_size = sizeof last};
    r.n = 0;
    EXPECT_OK(lk_trainer_run(t, record, &r, &last));
    double plain = 1e-2 * 0.5 * (1 + cos(pi * 3 / 4.0));
    CHECKF(r.n == 4 && fabs(r.p[3].lr - plain) <= 1e-15, "older struct: last lr %.17g, plain cosine %.17g", r.p[3].lr, plain);
    lk_trainer_free(t);
    t = NULL;
    base_params(&p);
    p.steps = 4;
    p.schedule = LK_SCHEDULE_COSINE;
    p.lr_min_ratio = 1.5;
    EXPECT_STATUS(lk_trainer_create(m, text_path, NULL, &p, &t), LK_ERR_INVALID_ARGUMENT, "params->lr_min_ratio");
    p.lr_min_ratio = NAN;
    EXPECT_STATUS(lk_trainer_create(m, text_path, NULL, &p, &t), LK_ERR_INVALID_ARGUMENT, "params->lr_min_ratio");
    p.lr_min_ratio = 0.1;
    p.schedule = LK_SCHEDULE_LINEAR;
    EXPECT_STATUS(lk_trainer_create(m, text_path, NULL, &p, &t), LK_ERR_INVALID_ARGUMENT, "params->lr_min_ratio");
    CHECK(t == NULL);
    lk_model_free(m);
}

static void test_bad_handles_and_files(void) {
    lk_model *m = load_model();
    lk_train_params p;
    base_params(&p);
    p.steps = 2;
    lk_trainer *t = NULL;

    /* Data files. */
    EXPECT_STATUS(lk_trainer_create(m, "/nonexistent/train.jsonl", NULL, &p, &t), LK_ERR_IO, "/nonexistent/train.jsonl");
    EXPECT_STATUS(lk_trainer_create(m, text_path, "/nonexistent/valid.jsonl", &p, &t), LK_ERR_IO, "/nonexistent/valid.jsonl");
    EXPECT_STATUS(lk_trainer_create(m, bad_path, NULL, &p, &t), LK_ERR_FORMAT, "bad.jsonl");
    const char *msg = lk_last_error();
    /* bad.jsonl: lines 2, 4, 5, 7, 8 and 9 are bad (Fixtures/train/README.md); 1, 3, 6 and 10 are good. */
    CHECKF(strstr(msg, "6 bad lines") != NULL, "message: %s", msg);
    static const char *bad_lines[] = {"bad.jsonl:2:", "bad.jsonl:4:", "bad.jsonl:5:", "bad.jsonl:7:", "bad.jsonl:8:",
                                      "bad.jsonl:9:"};
    for (int i = 0; i < 6; i++) CHECKF(strstr(msg, bad_lines[i]) != NULL, "the message does not name %s: %s", bad_lines[i], msg);
    CHECKF(!strstr(msg, "bad.jsonl:1:") && !strstr(msg, "bad.jsonl:3:") && !strstr(msg, "bad.jsonl:6:") &&
           !strstr(msg, "bad.jsonl:10:"), "the message names a good line: %s", msg);
    EXPECT_STATUS(lk_trainer_create(m, text_path, bad_path, &p, &t), LK_ERR_FORMAT, "bad.jsonl:2:");
    CHECK(t == NULL);

    /* NULLs and wrong kinds. */
    EXPECT_STATUS(lk_trainer_create(NULL, text_path, NULL, &p, &t), LK_ERR_INVALID_HANDLE, "model");
    EXPECT_STATUS(lk_trainer_create(m, "", NULL, &p, &t), LK_ERR_INVALID_ARGUMENT, "train_path");
    EXPECT_STATUS(lk_trainer_create(m, text_path, "", &p, &t), LK_ERR_INVALID_ARGUMENT, "valid_path");
    EXPECT_STATUS(lk_trainer_create(m, text_path, NULL, &p, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    lk_train_progress pr = {.struct_size = sizeof pr};
    double loss = 0;
    lk_adapter *ad = NULL;
    EXPECT_STATUS(lk_trainer_step(NULL, &pr), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_run(NULL, NULL, NULL, &pr), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_validation_loss(NULL, &loss), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_save_checkpoint(NULL), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_adapter(NULL, &ad), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_steps(NULL, NULL, NULL), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_step((lk_trainer *)m, &pr), LK_ERR_INVALID_HANDLE, "expected trainer");
    EXPECT_OK(lk_trainer_free(NULL));
    EXPECT_STATUS(lk_trainer_free((lk_trainer *)m), LK_ERR_INVALID_HANDLE, "expected trainer");

    t = new_trainer(m, text_path, &p);
    EXPECT_STATUS(lk_trainer_step((lk_trainer *)(uintptr_t)0x1234560, &pr), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_context_reset((lk_context *)t), LK_ERR_INVALID_HANDLE, "expected context");
    EXPECT_STATUS(lk_adapter_save((lk_adapter *)t, "/tmp/x", 0), LK_ERR_INVALID_HANDLE, "expected adapter");
    EXPECT_STATUS(lk_trainer_validation_loss(t, NULL), LK_ERR_INVALID_ARGUMENT, "loss");
    EXPECT_STATUS(lk_trainer_adapter(t, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    EXPECT_STATUS(lk_trainer_save_checkpoint(t), LK_ERR_INVALID_ARGUMENT, "out_dir");
    /* Result structs: struct_size checked before anything runs. */
    lk_train_progress bad = {.struct_size = 0};
    EXPECT_STATUS(lk_trainer_step(t, &bad), LK_ERR_ABI, "lk_train_progress");
    EXPECT_STATUS(lk_trainer_run(t, NULL, NULL, &bad), LK_ERR_ABI, "lk_train_progress");
    int64_t done = -1;
    EXPECT_OK(lk_trainer_steps(t, &done, NULL));
    CHECK(done == 0);
    /* A newer, larger lk_train_progress: the fields this library knows are written, the rest untouched. */
    unsigned char big[sizeof(lk_train_progress) + 16];
    memset(big, 0xEE, sizeof big);
    uint32_t size = (uint32_t)sizeof big;
    memcpy(big, &size, 4);
    EXPECT_OK(lk_trainer_step(t, (lk_train_progress *)(void *)big));
    int64_t step = 0;
    memcpy(&step, big + offsetof(lk_train_progress, step), 8);
    CHECK(step == 1);
    memcpy(&size, big, 4);
    CHECK(size == sizeof big);  /* struct_size is left as the caller set it */
    int untouched = 1;
    for (size_t i = sizeof(lk_train_progress); i < sizeof big; i++) untouched &= big[i] == 0xEE;
    CHECK(untouched);

    /* A freed trainer. */
    EXPECT_OK(lk_trainer_free(t));
    EXPECT_STATUS(lk_trainer_free(t), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_step(t, &pr), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_STATUS(lk_trainer_run(t, NULL, NULL, NULL), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_adapter(t, &ad), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_steps(t, &done, NULL), LK_ERR_INVALID_HANDLE, "trainer");
    lk_model_free(m);
}

/* The trainer keeps its model: freeing the model handle first, the trainer still trains, and its
 * adapters still save and load. */
static void test_model_freed_first(void) {
    lk_model *m = load_model();
    const char *dir = make_tmp();
    lk_train_params p;
    base_params(&p);
    p.steps = 3;
    lk_trainer *t = new_trainer(m, NULL, &p);
    EXPECT_OK(lk_model_free(m));
    lk_train_progress last = {.struct_size = sizeof last};
    EXPECT_OK(lk_trainer_run(t, NULL, NULL, &last));
    CHECK(last.step == 3 && isfinite(last.loss));
    lk_adapter *a = NULL;
    EXPECT_OK(lk_trainer_adapter(t, &a));
    EXPECT_OK(lk_trainer_free(t));
    char path[400];
    snprintf(path, sizeof path, "%s/peft", dir);
    EXPECT_OK(lk_adapter_save(a, path, LK_ADAPTER_PEFT));  /* the adapter outlives trainer and model handle */
    EXPECT_OK(lk_adapter_free(a));
    m = load_model();
    lk_adapter *b = NULL;
    EXPECT_OK(lk_adapter_load(m, path, &b));
    lk_adapter_free(b);
    lk_model_free(m);
    remove_tmp();
}

/* The callback must not use its trainer ("in use"); another trainer is fine. */
typedef struct {
    lk_trainer *self, *other;
    lk_status step_self, adapter_self, step_other;
    char message[512];
} reentry;

static int32_t reenter(const lk_train_progress *p, void *user) {
    (void)p;
    reentry *r = user;
    lk_adapter *a = NULL;
    r->step_self = lk_trainer_step(r->self, NULL);
    snprintf(r->message, sizeof r->message, "%s", lk_last_error());
    r->adapter_self = lk_trainer_adapter(r->self, &a);
    r->step_other = lk_trainer_step(r->other, NULL);
    return 1;
}

static void test_callback_cannot_use_its_trainer(void) {
    lk_model *m = load_model();
    lk_train_params p;
    base_params(&p);
    p.steps = 5;
    reentry r = {.self = new_trainer(m, NULL, &p), .other = new_trainer(m, NULL, &p)};
    EXPECT_STATUS(lk_trainer_run(r.self, reenter, &r, NULL), LK_STOPPED, NULL);
    CHECK(r.step_self == LK_ERR_INVALID_ARGUMENT && strstr(r.message, "in use"));
    CHECK(r.adapter_self == LK_ERR_INVALID_ARGUMENT);
    CHECK(r.step_other == LK_OK);
    int64_t a = 0, b = 0;
    EXPECT_OK(lk_trainer_steps(r.self, &a, NULL));
    EXPECT_OK(lk_trainer_steps(r.other, &b, NULL));
    CHECK(a == 1 && b == 1);
    lk_trainer_free(r.self);
    lk_trainer_free(r.other);
    lk_model_free(m);
}

/* Two trainers on one model, each on its own thread, train as they do alone (same losses, bit for bit). */
typedef struct {
    lk_model *m;
    uint64_t seed;
    lk_status status;
    double loss[6];
} job;

static void *train_job(void *arg) {
    job *j = arg;
    lk_train_params p;
    base_params(&p);
    p.steps = 6;
    p.seed = j->seed;
    p.dropout = 0.05f;
    lk_trainer *t = NULL;
    j->status = lk_trainer_create(j->m, text_path, NULL, &p, &t);
    for (int i = 0; i < 6 && j->status == LK_OK; i++) {
        lk_train_progress pr = {.struct_size = sizeof pr};
        j->status = lk_trainer_step(t, &pr);
        j->loss[i] = pr.loss;
    }
    lk_trainer_free(t);
    return NULL;
}

static void test_two_trainers_concurrently(void) {
    lk_model *m = load_model();
    job alone[2] = {{.m = m, .seed = 1}, {.m = m, .seed = 2}};
    train_job(&alone[0]);
    train_job(&alone[1]);
    job together[2] = {{.m = m, .seed = 1}, {.m = m, .seed = 2}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, train_job, &together[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECKF(alone[i].status == LK_OK && together[i].status == LK_OK, "trainer %d: %d / %d", i, alone[i].status,
               together[i].status);
        for (int k = 0; k < 6; k++)
            CHECKF(alone[i].loss[k] == together[i].loss[k], "trainer %d step %d: %.9g alone, %.9g concurrently", i,
                   k + 1, alone[i].loss[k], together[i].loss[k]);
    }
    CHECK(alone[0].loss[1] != alone[1].loss[1]);  /* the seeds give different runs */
    lk_model_free(m);
}

/* ------------------------------------------------------------------------------------------------ */
/* Low-level training (train_path NULL): lk_trainer_zero_grad / forward_backward / optimizer_step      */
/* ------------------------------------------------------------------------------------------------ */

static char *reference_json;

static const char *reference(void) {
    if (!reference_json) {
        char p[4300];
        snprintf(p, sizeof p, "%s/reference.json", fx);
        reference_json = lk_read_file(p, NULL);
        if (!reference_json) { fprintf(stderr, "setup: cannot read %s\n", p); exit(2); }
    }
    return reference_json;
}

/* The text just after the next occurrence of `key` at or after p (exits when missing: fixture setup). */
static const char *after(const char *p, const char *key) {
    const char *q = p ? strstr(p, key) : NULL;
    if (!q) { fprintf(stderr, "setup: reference.json: %s not found\n", key); exit(2); }
    return q + strlen(key);
}

/* Up to cap numbers of the (possibly nested) JSON array starting at p ('['); returns the count. */
static int64_t parse_numbers(const char *p, double *out, int64_t cap) {
    int depth = 0;
    int64_t n = 0;
    for (;;) {
        char c = *p;
        if (c == '[') { depth++; p++; continue; }
        if (c == ']') { if (--depth == 0) return n; p++; continue; }
        if (c == ',' || c == ' ' || c == '\n') { p++; continue; }
        char *end = NULL;
        double v = strtod(p, &end);
        if (end == p || n >= cap) return -1;
        out[n++] = v;
        p = end;
    }
}

/* Row `token` of the model's embedding table (model.safetensors, F32 [512, 64]). */
static void embedding_row(int32_t token, float *out) {
    char p[4300];
    size_t n = 0;
    snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
    unsigned char *st = (unsigned char *)lk_read_file(p, &n);
    if (!st) { fprintf(stderr, "setup: cannot read %s\n", p); exit(2); }
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--) header = header << 8 | st[i];
    char *h = malloc(header + 1);
    memcpy(h, st + 8, header);
    h[header] = 0;
    const char *e = strstr(h, "\"model.embed_tokens.weight\"");
    const char *f32 = e ? strstr(e, "\"F32\"") : NULL;
    const char *off = e ? strstr(e, "\"data_offsets\":") : NULL;
    long start = off ? strtol(strchr(off, '[') + 1, NULL, 10) : -1;
    if (!f32 || start < 0) { fprintf(stderr, "setup: no F32 model.embed_tokens.weight in %s\n", p); exit(2); }
    memcpy(out, st + 8 + header + (size_t)start + (size_t)token * 64 * sizeof(float), 64 * sizeof(float));
    free(h);
    free(st);
}

static lk_trainer *manual_trainer(lk_model *m, const lk_train_params *p) { return create_trainer(m, NULL, NULL, p); }

/* PyTorch's loss and dLoss/d(inputs_embeds) for example 0 cut to 24 tokens with the text_all initial adapter
 * (reference.json → runs.text_all.embedding_grad_check); then the same with token 0 given as a prefix
 * embedding row (its row of the embedding table) instead of an id. */
static void test_low_level_input_gradient_matches_pytorch(void) {
    lk_model *m = load_model();
    char init[4300];
    snprintf(init, sizeof init, "%s/text_all/init", fx);
    lk_train_params p;
    lk_train_params_init(&p);
    p.init_adapter = init;
    p.threads = 2;
    lk_trainer *t = manual_trainer(m, &p);

    const char *check = after(after(after(reference(), "\"runs\""), "\"text_all\""), "\"embedding_grad_check\"");
    double v[24 * 64];
    CHECK(parse_numbers(after(check, "\"ids\": ") - 0, v, 64) == 24);
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (int32_t)v[i];
    const double want_loss = strtod(after(check, "\"loss\": "), NULL);
    const double max_abs = strtod(after(check, "\"grad_inputs_embeds_max_abs\": "), NULL);
    static double want[24 * 64];
    CHECK(parse_numbers(after(check, "\"grad_inputs_embeds\": "), want, 24 * 64) == 24 * 64);

    static float grad[24 * 64], grad2[24 * 64];
    double sum = 0;
    int64_t predicted = 0;
    EXPECT_OK(lk_trainer_zero_grad(t));
    EXPECT_OK(lk_trainer_forward_backward(t, ids, NULL, 24, NULL, 0, 1.0f / 23, &sum, &predicted, grad, 24 * 64));
    CHECK(predicted == 23);
    printf("    loss %.7f (PyTorch %.7f)\n", sum / 23, want_loss);
    CHECKF(fabs(sum / 23 - want_loss) <= 1e-5 * want_loss, "loss %.7f vs PyTorch %.7f", sum / 23, want_loss);
    double worst = 0;
    for (int i = 0; i < 24 * 64; i++) worst = fmax(worst, fabs(grad[i] - want[i]));
    printf("    input gradient max |Δ| vs PyTorch %.3g (max |g| %.4f)\n", worst, max_abs);
    CHECKF(worst <= 1e-4 * max_abs, "input gradient max |Δ| %g vs PyTorch (max |g| %g)", worst, max_abs);

    /* Token 0 as a prefix row: the same rows, so the same loss and input gradient; token 0 of the tokens
     * (ids[1]) is now predicted from the prefix. */
    float row0[64];
    embedding_row(ids[0], row0);
    uint8_t all[23];
    memset(all, 1, sizeof all);
    double sum2 = 0;
    int64_t predicted2 = 0;
    EXPECT_OK(lk_trainer_forward_backward(t, ids + 1, all, 23, row0, 1, 1.0f / 23, &sum2, &predicted2, grad2, 24 * 64));
    CHECK(predicted2 == 23);
    CHECKF(fabs(sum2 - sum) <= 1e-6 * sum, "with a prefix row: Σ NLL %.9g vs %.9g", sum2, sum);
    float d2 = 0;
    for (int i = 0; i < 24 * 64; i++) d2 = fmaxf(d2, fabsf(grad2[i] - grad[i]));
    CHECKF(d2 <= 1e-6f, "with a prefix row: input gradient max |Δ| %g", d2);
    /* is_target 0 leaves a token out of the loss. */
    all[22] = 0;
    double sum3 = 0;
    int64_t predicted3 = 0;
    EXPECT_OK(lk_trainer_forward_backward(t, ids + 1, all, 23, row0, 1, 0.0f, &sum3, &predicted3, NULL, 0));
    CHECK(predicted3 == 22 && sum3 < sum2 && sum3 > 0);
    lk_trainer_free(t);
    lk_model_free(m);
}

/* The text_all run of reference.json (PyTorch + PEFT, 20 steps: r 4, α 8, all modules, batch 2 × seq 24,
 * cosine 2e-3 with 3 warm-up steps, clipping 1.0, wd 0.01), made of low-level calls: the examples of each
 * step from examples.json, its learning rate from reference.json. Steps 1-10, a checkpoint, a new trainer
 * resuming from it, steps 11-20; every loss and gradient norm and the final adapter against PyTorch's. */
static void test_low_level_run_matches_pytorch(void) {
    load_examples();
    lk_model *m = load_model();
    const char *out = make_tmp();
    char init[4300];
    snprintf(init, sizeof init, "%s/text_all/init", fx);
    lk_train_params p;
    lk_train_params_init(&p);
    p.init_adapter = init;
    p.threads = 2;
    p.lr = 2e-3;
    p.weight_decay = 0.01;
    p.max_grad_norm = 1.0;
    p.steps = 20;
    p.out_dir = out;
    lk_trainer *t = manual_trainer(m, &p);
    int64_t done = -1, total = -1;
    EXPECT_OK(lk_trainer_steps(t, &done, &total));
    CHECK(done == 0 && total == 20);

    const char *step = after(after(after(reference(), "\"runs\""), "\"text_all\""), "\"steps\": [");
    double worst_loss = 0, worst_norm = 0;
    for (int s = 0; s < 20; s++) {
        if (s == 10) {  /* resume in a new trainer */
            EXPECT_OK(lk_trainer_save_checkpoint(t));
            EXPECT_OK(lk_trainer_free(t));
            p.resume_dir = out;
            t = manual_trainer(m, &p);
            EXPECT_OK(lk_trainer_steps(t, &done, NULL));
            CHECKF(done == 10, "resumed at step %lld", (long long)done);
        }
        step = after(step, "\"step\": ");
        CHECK(strtol(step, NULL, 10) == s);
        double want_loss = strtod(after(step, "\"loss\": "), NULL);
        double lr = strtod(after(step, "\"lr\": "), NULL);
        double want_norm = strtod(after(step, "\"grad_norm\": "), NULL);
        double ex[8];
        int64_t n_ex = parse_numbers(after(step, "\"examples\": "), ex, 8);
        CHECK(n_ex == 2);  /* one micro-batch of 2 examples */
        int32_t rows[2][24];
        int64_t len[2], n_pred = 0;
        for (int k = 0; k < 2; k++) {
            int e = (int)ex[k];
            len[k] = ex_len[e] < 24 ? ex_len[e] : 24;
            memcpy(rows[k], ex_ids[e], sizeof(int32_t) * (size_t)len[k]);
            n_pred += len[k] - 1;
        }
        EXPECT_OK(lk_trainer_zero_grad(t));
        double sum = 0;
        for (int k = 0; k < 2; k++) {
            double part = 0;
            int64_t pred = 0;
            EXPECT_OK(lk_trainer_forward_backward(t, rows[k], NULL, len[k], NULL, 0, 1.0f / (float)n_pred, &part, &pred, NULL, 0));
            CHECK(pred == len[k] - 1);
            sum += part;
        }
        double norm = 0;
        EXPECT_OK(lk_trainer_optimizer_step(t, lr, &norm));
        double loss = sum / (double)n_pred;
        worst_loss = fmax(worst_loss, fabs(loss - want_loss) / want_loss);
        worst_norm = fmax(worst_norm, fabs(norm - want_norm) / want_norm);
        CHECKF(fabs(loss - want_loss) <= 1e-4 * want_loss, "step %d: loss %.8g, PyTorch %.8g", s + 1, loss, want_loss);
        CHECKF(fabs(norm - want_norm) <= 1e-4 * want_norm, "step %d: grad norm %.7g, PyTorch %.7g", s + 1, norm, want_norm);
    }
    printf("    20 steps: max relative |Δ| vs PyTorch: loss %.2g, grad norm %.2g\n", worst_loss, worst_norm);
    EXPECT_OK(lk_trainer_steps(t, &done, NULL));
    CHECK(done == 20);

    /* The final adapter: logits with it vs with PEFT's final adapter (text_all/final). */
    char final_path[4300];
    snprintf(final_path, sizeof final_path, "%s/text_all/final", fx);
    lk_adapter *ours = NULL, *theirs = NULL;
    EXPECT_OK(lk_trainer_adapter(t, &ours));
    EXPECT_OK(lk_adapter_load(m, final_path, &theirs));
    if (ours && theirs) {
        float *a = logits_with(m, ours), *b = logits_with(m, theirs);
        float d = 0;
        for (int64_t i = 0; i < (int64_t)ex_len[0] * VOCAB; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
        printf("    final adapter: logits max |Δ| vs PEFT's %.3g\n", d);
        CHECKF(d <= 1e-4f, "final adapter: logits max |Δ| %g vs PEFT's", d);
        free(a); free(b);
    }
    lk_adapter_free(ours);
    lk_adapter_free(theirs);
    lk_trainer_free(t);
    lk_model_free(m);
    remove_tmp();
}

static void test_low_level_bad_input(void) {
    lk_model *m = load_model();
    lk_train_params p;
    base_params(&p);
    p.steps = 2;
    lk_trainer *data = new_trainer(m, NULL, &p);
    lk_trainer *t = NULL;
    EXPECT_OK(lk_trainer_create(m, NULL, text_path, &p, &t));  /* no training data, validation data */
    int32_t ids[4] = {298, 509, 265, 268};
    uint8_t flags[4] = {0, 1, 1, 1};
    float g[8 * 64];
    double sum = 0, norm = 0;
    int64_t pred = 0;

    /* Each kind of trainer refuses the other's calls. */
    EXPECT_STATUS(lk_trainer_forward_backward(data, ids, NULL, 4, NULL, 0, 1, &sum, &pred, NULL, 0), LK_ERR_INVALID_ARGUMENT, "train_path NULL");
    EXPECT_STATUS(lk_trainer_optimizer_step(data, 1e-3, &norm), LK_ERR_INVALID_ARGUMENT, "lk_trainer_step");
    EXPECT_STATUS(lk_trainer_zero_grad(data), LK_ERR_INVALID_ARGUMENT, "train_path NULL");
    EXPECT_STATUS(lk_trainer_step(t, NULL), LK_ERR_INVALID_ARGUMENT, "no training data");
    EXPECT_STATUS(lk_trainer_run(t, NULL, NULL, NULL), LK_ERR_INVALID_ARGUMENT, "lk_trainer_forward_backward");

    /* Arguments. */
    EXPECT_STATUS(lk_trainer_forward_backward(NULL, ids, NULL, 4, NULL, 0, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_HANDLE, "trainer");
    EXPECT_STATUS(lk_trainer_forward_backward(t, NULL, NULL, 4, NULL, 0, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "tokens");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, -1, NULL, 0, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "n_tokens");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 4, NULL, -1, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "n_prefix");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 0, NULL, 0, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "1...256");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 300, NULL, 0, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "1...256");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, INT64_MAX, NULL, INT64_MAX, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "n_prefix");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 4, NULL, 1, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "prefix is NULL");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 4, NULL, 0, NAN, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "loss_scale");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 4, NULL, 0, 1, NULL, NULL, g, 4 * 64 - 1), LK_ERR_BUFFER_TOO_SMALL, "input_grad_capacity");
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 4, NULL, 0, 1, NULL, NULL, g, -1), LK_ERR_INVALID_ARGUMENT, "input_grad_capacity");
    flags[2] = 2;
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, flags, 4, NULL, 0, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "is_target[2]");
    flags[2] = 1;
    int32_t bad_ids[4] = {298, 512, 265, 268};
    EXPECT_STATUS(lk_trainer_forward_backward(t, bad_ids, NULL, 4, NULL, 0, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "512");
    float pre[64] = {0};
    pre[5] = NAN;
    EXPECT_STATUS(lk_trainer_forward_backward(t, ids, NULL, 4, pre, 1, 1, NULL, NULL, NULL, 0), LK_ERR_INVALID_ARGUMENT, "prefix[0][5]");
    EXPECT_STATUS(lk_trainer_optimizer_step(t, NAN, &norm), LK_ERR_INVALID_ARGUMENT, "lr");
    EXPECT_STATUS(lk_trainer_optimizer_step(t, -1e-3, &norm), LK_ERR_INVALID_ARGUMENT, "lr");
    int64_t done = -1;
    EXPECT_OK(lk_trainer_steps(t, &done, NULL));
    CHECK(done == 0);

    /* And a valid step: outputs written, a finite norm; validation data works on this trainer. */
    EXPECT_OK(lk_trainer_zero_grad(t));
    EXPECT_OK(lk_trainer_forward_backward(t, ids, flags, 4, NULL, 0, 1.0f / 3, &sum, &pred, g, 8 * 64));
    CHECK(pred == 3 && isfinite(sum) && sum > 0);
    EXPECT_OK(lk_trainer_optimizer_step(t, 1e-2, NULL));
    EXPECT_OK(lk_trainer_optimizer_step(t, 0, &norm));  /* the gradients stay until zeroed */
    CHECK(isfinite(norm) && norm > 0);
    EXPECT_OK(lk_trainer_steps(t, &done, NULL));
    CHECK(done == 2);
    double vloss = 0;
    EXPECT_OK(lk_trainer_validation_loss(t, &vloss));
    lk_adapter *a = NULL;
    EXPECT_OK(lk_trainer_adapter(t, &a));
    double ref = reference_loss(m, a);
    CHECKF(fabs(vloss - ref) <= 1e-4 * ref, "manual trainer: validation loss %.7f vs inference %.7f", vloss, ref);
    lk_adapter_free(a);
    lk_trainer_free(t);
    lk_trainer_free(data);
    lk_model_free(m);
}

/* kept_activations: LK_DTYPE_F16 rounds the activations the backward reads to f16. The loss is the f32
 * one bit for bit, the input gradient within f16 rounding of it (and not equal: the rounding happens); an
 * unknown value is refused naming the field; a struct that ends before the field keeps f32. */
static void test_kept_activations(void) {
    lk_model *m = load_model();
    char init[4300];
    snprintf(init, sizeof init, "%s/text_all/init", fx);
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (int32_t)((i * 37 + 11) % 500);
    static float g[3][24 * 64];
    double sum[3] = {0};
    for (int k = 0; k < 3; k++) {
        lk_train_params p;
        lk_train_params_init(&p);
        CHECK(p.kept_activations == LK_DTYPE_F32);
        p.init_adapter = init;
        p.threads = 2;
        if (k == 1) p.kept_activations = LK_DTYPE_F16;
        if (k == 2) {  /* a program built before the field: whatever is there is not read */
            p.kept_activations = 7;
            p.struct_size = (uint32_t)offsetof(lk_train_params, kept_activations);
        }
        lk_trainer *t = manual_trainer(m, &p);
        int64_t predicted = 0;
        EXPECT_OK(lk_trainer_zero_grad(t));
        EXPECT_OK(lk_trainer_forward_backward(t, ids, NULL, 24, NULL, 0, 1.0f / 23, &sum[k], &predicted, g[k], 24 * 64));
        CHECK(predicted == 23);
        lk_trainer_free(t);
    }
    CHECKF(sum[1] == sum[0], "f16 keeping changed the loss: %.17g vs %.17g", sum[1], sum[0]);
    CHECK(sum[2] == sum[0] && memcmp(g[2], g[0], sizeof g[0]) == 0);
    float worst = 0, scale = 0;
    for (int i = 0; i < 24 * 64; i++) {
        worst = fmaxf(worst, fabsf(g[1][i] - g[0][i]));
        scale = fmaxf(scale, fabsf(g[0][i]));
    }
    printf("    f16 kept activations: input gradient max |Δ| %.3g (max |g| %.4f)\n", worst, scale);
    CHECKF(worst > 0 && worst <= 1e-2f * scale, "input gradient max |Δ| %g (max |g| %g)", worst, scale);
    lk_train_params p;
    lk_train_params_init(&p);
    p.kept_activations = 2;
    lk_trainer *t = NULL;
    EXPECT_STATUS(lk_trainer_create(m, NULL, NULL, &p, &t), LK_ERR_INVALID_ARGUMENT, "params->kept_activations");
    CHECK(t == NULL);
    lk_model_free(m);
}

LKT_MAIN("test_train", setup,
         TESTCASE(test_params_defaults_and_sizes),
         TESTCASE(test_training_reduces_loss),
         TESTCASE(test_callback_stops),
         TESTCASE(test_resume_matches_uninterrupted),
         TESTCASE(test_nonfinite_loss_keeps_checkpoint),
         TESTCASE(test_bad_params),
         TESTCASE(test_lr_min_ratio),
         TESTCASE(test_kept_activations),
         TESTCASE(test_bad_handles_and_files),
         TESTCASE(test_model_freed_first),
         TESTCASE(test_callback_cannot_use_its_trainer),
         TESTCASE(test_two_trainers_concurrently),
         TESTCASE(test_low_level_input_gradient_matches_pytorch),
         TESTCASE(test_low_level_run_matches_pytorch),
         TESTCASE(test_low_level_bad_input))
