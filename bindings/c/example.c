/* example.c — multiply a small batch of activations by a linear layer's weight with LoRAKit.
 * Build against an installed LoRAKit:
 *   cc -std=c11 example.c $(pkg-config --cflags --libs lorakit) -o example && ./example
 */
#include <stdio.h>
#include <lorakit.h>

/* Print the failing call and LoRAKit's message, then leave. */
#define TRY(call)                                                                                  \
    do {                                                                                           \
        lk_status s_ = (call);                                                                     \
        if (s_ != LK_OK) {                                                                         \
            fprintf(stderr, "%s failed: %s: %s\n", #call, lk_status_string(s_), lk_last_error());  \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

int main(void) {
    if (lk_abi_version() != LK_ABI_VERSION) {
        fprintf(stderr, "liblorakit ABI %d, header ABI %d\n", lk_abi_version(), LK_ABI_VERSION);
        return 1;
    }
    printf("LoRAKit %s, %d CPU core(s)\n", lk_version_string(), lk_cpu_count());

    /* x: 2 tokens × 3 features; w: a linear layer with 3 inputs and 2 outputs, stored [out, in]. */
    const float x_values[6] = {1, 2, 3, 4, 5, 6};
    const float w_values[6] = {1, 0, -1, 0.5f, 0.5f, 0.5f};
    const int64_t x_shape[2] = {2, 3}, w_shape[2] = {2, 3}, y_shape[2] = {2, 2};
    lk_tensor *x = NULL, *w = NULL, *y = NULL;
    TRY(lk_tensor_from_f32(x_values, 6, LK_DTYPE_F32, 2, x_shape, &x));
    TRY(lk_tensor_from_f32(w_values, 6, LK_DTYPE_F32, 2, w_shape, &w));
    TRY(lk_tensor_new(LK_DTYPE_F32, 2, y_shape, &y));

    TRY(lk_matmul(x, w, /* transpose_w = */ 1, y)); /* y = x · wᵀ */
    float y_values[4];
    TRY(lk_tensor_copy_to_f32(y, y_values, 4));
    printf("y = [[%g, %g], [%g, %g]]\n", y_values[0], y_values[1], y_values[2], y_values[3]);

    /* Errors come back as a status plus a message naming the problem. */
    lk_status s = lk_matmul(x, w, /* transpose_w = */ 0, y); /* x [2, 3] · w [2, 3]: inner sizes differ */
    printf("x · w without transposing: %s (%s)\n", lk_status_string(s), s ? lk_last_error() : "no error");

    lk_tensor_free(x);
    lk_tensor_free(w);
    lk_tensor_free(y);
    return (y_values[0] == -2 && y_values[3] == 7.5f && s == LK_ERR_SHAPE) ? 0 : 1;
}
