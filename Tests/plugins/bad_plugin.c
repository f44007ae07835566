/*
 * bad_plugin.c — deliberately broken plugins for the loader tests, one per -D flag:
 *   BAD_MAJOR        a table from plugin ABI 0.7                 BAD_NOSYMBOL   exports no lkp_entry
 *   BAD_SHORT        a table of 16 bytes (below version 1.0)      BAD_ENTRY_ERROR  lkp_entry fails, with a message
 *   BAD_DUP_TYPE     declares "ia3" (already registered)          BAD_DUP_WITHIN   declares "twin" twice
 *   BAD_NO_FORWARD   a type without forward                       BAD_NAME       a type named "Bad-Name"
 *   BAD_TYPE_SHORT   a type table of 24 bytes
 */
#include <stddef.h>
#include "lorakit_plugin.h"

static const lkp_host *host;

static lkp_status create(lkp_create_args *a) { (void)a; return LKP_ERR_UNSUPPORTED; }
static void destroy(lkp_instance *i) { (void)i; }
static lkp_status param_info(const lkp_instance *i, int32_t k, lkp_param_info *o) { (void)i; (void)k; (void)o; return LKP_ERR_UNSUPPORTED; }
static lkp_status forward(const lkp_forward_args *a) { (void)a; return LKP_ERR_UNSUPPORTED; }
static const char *const suffixes[] = { "bad_x" };

#if defined(BAD_DUP_TYPE)
#  define NAME1 "ia3"
#elif defined(BAD_DUP_WITHIN)
#  define NAME1 "twin"
#elif defined(BAD_NAME)
#  define NAME1 "Bad-Name"
#elif defined(BAD_NO_FORWARD)
#  define NAME1 "noforward"
#else
#  define NAME1 "bad"
#endif

static const lkp_adapter_type type1 = {
#if defined(BAD_TYPE_SHORT)
    .struct_size = 24,
#else
    .struct_size = sizeof(lkp_adapter_type),
#endif
    .name = NAME1, .description = "a broken type", .peft_type = "BAD", .key_suffixes = suffixes, .n_key_suffixes = 1,
    .create = create, .destroy = destroy, .param_info = param_info,
#if !defined(BAD_NO_FORWARD)
    .forward = forward,
#endif
};
static const lkp_adapter_type type2 = {
    .struct_size = sizeof(lkp_adapter_type), .name = "twin", .description = "a second twin", .peft_type = "BAD",
    .key_suffixes = suffixes, .n_key_suffixes = 1, .create = create, .destroy = destroy, .param_info = param_info,
    .forward = forward,
};
static const lkp_adapter_type *const types[] = { &type1, &type2 };

static const lkp_plugin plugin = {
#if defined(BAD_SHORT)
    .struct_size = 16,
#else
    .struct_size = sizeof(lkp_plugin),
#endif
#if defined(BAD_MAJOR)
    .abi_major = 0, .abi_minor = 7,
#else
    .abi_major = LKP_ABI_MAJOR, .abi_minor = LKP_ABI_MINOR,
#endif
    .name = "bad", .version = "0.0.1",
#if defined(BAD_DUP_WITHIN)
    .n_types = 2,
#else
    .n_types = 1,
#endif
    .types = types,
};

#if defined(BAD_NOSYMBOL)
LKP_EXPORT lkp_status lkp_entry_misspelled(const lkp_host *h, const lkp_plugin **out) {
#else
LKP_EXPORT lkp_status lkp_entry(const lkp_host *h, const lkp_plugin **out) {
#endif
    host = h;
#if defined(BAD_ENTRY_ERROR)
    char msg[64] = "bad_entry_error: needs a host with a GPU (found none)";  /* a stack buffer: the host copies */
    host->set_error(msg);
    msg[0] = 0;
    *out = &plugin;   /* ignored: the status says it failed */
    return LKP_ERR_UNSUPPORTED;
#else
    *out = &plugin;
    return LKP_OK;
#endif
}
