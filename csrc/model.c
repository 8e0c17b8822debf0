/* model.c - config.json -> sv_config, tensor binding and validation, model
 * lifetime.  Nothing here computes; it decides what the weights are and
 * refuses anything that does not match the config. */
#include "model.h"
#include "profile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "decoder.h"
#include "error.h"
#include "json.h"
#include "kernels.h"
#include "quant.h"

/* Sizes beyond these are refused as absurd before anything is allocated. */
#define MAX_LAYERS 1024
#define MAX_HIDDEN 65536
#define MAX_HEADS 1024
#define MAX_VOCAB (1 << 22)
#define MAX_INTERMEDIATE (1 << 20)
#define MAX_IMAGE_SIZE 8192
#define MAX_POSITIONS (1 << 22)
#define MAX_CONFIG_BYTES (16u << 20)
#define MAX_THREADS 1024

/* ---- config ---- */

typedef struct {
    const char *path;
    const char *section; /* "vision_config", "text_config" or "" */
} cfg_ctx;

static sv_status get_int(const cfg_ctx *c, const json_value *obj, const char *key, int64_t dflt, int64_t lo,
                         int64_t hi, int32_t *out) {
    int64_t v = dflt;
    int r = json_get_int(obj, key, &v);
    const char *dot = c->section[0] ? "." : "";
    if (r < 0) return sv_fail(SV_ERR_FORMAT, "%s: %s%s%s must be an integer", c->path, c->section, dot, key);
    if (v < lo || v > hi)
        return sv_fail(SV_ERR_FORMAT, "%s: %s%s%s = %lld is outside the supported range [%lld, %lld]", c->path,
                       c->section, dot, key, (long long)v, (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return SV_OK;
}

static sv_status get_real(const cfg_ctx *c, const json_value *obj, const char *key, double dflt, double *out) {
    double v = dflt;
    if (json_get_double(obj, key, &v) < 0 || !(v > 0) || v > 1e30)
        return sv_fail(SV_ERR_FORMAT, "%s: %s.%s must be a positive number", c->path, c->section, key);
    *out = v;
    return SV_OK;
}

static sv_status get_flag(const cfg_ctx *c, const json_value *obj, const char *key, int *out) {
    if (json_get_bool(obj, key, out) < 0)
        return sv_fail(SV_ERR_FORMAT, "%s: %s%s%s must be true or false", c->path, c->section,
                       c->section[0] ? "." : "", key);
    return SV_OK;
}

static sv_status check_act(const cfg_ctx *c, const json_value *obj, const char *want) {
    const json_value *act = json_get(obj, "hidden_act");
    if (!act) return SV_OK; /* the default is what we run */
    if (act->type != JSON_STRING || strcmp(act->str, want) != 0)
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: %s.hidden_act is %s%s%s; smolvision runs '%s'", c->path, c->section,
                       act->type == JSON_STRING ? "'" : "", act->type == JSON_STRING ? act->str : "not a string",
                       act->type == JSON_STRING ? "'" : "", want);
    return SV_OK;
}

/* The family a config names by model_type or, lacking one, by architecture; -1 for neither. */
static int family_of(const json_value *root) {
    static const struct { const char *model_type, *architecture; sv_family family; } known[] = {
        {"idefics3", "Idefics3ForConditionalGeneration", SV_FAMILY_SMOLVLM},
        {"smolvlm", "SmolVLMForConditionalGeneration", SV_FAMILY_SMOLVLM2},
    };
    const size_t n = sizeof known / sizeof known[0];
    const char *type = json_get_string(root, "model_type");
    for (size_t k = 0; type && k < n; k++)
        if (strcmp(type, known[k].model_type) == 0) return (int)known[k].family;
    const json_value *arch = json_get(root, "architectures");
    if (!arch || arch->type != JSON_ARRAY) return -1;
    for (size_t i = 0; i < arch->len; i++)
        for (size_t k = 0; k < n; k++)
            if (arch->items[i].type == JSON_STRING && strcmp(arch->items[i].str, known[k].architecture) == 0)
                return (int)known[k].family;
    return -1;
}

static sv_status parse_vision(const cfg_ctx *c, const json_value *v, sv_config *cfg) {
    sv_status s;
    double eps = 0;
    /* Defaults are Idefics3VisionConfig's (SmolVLMVisionConfig's are the same), used when a key is
     * absent: published SmolVLM2 configs omit the keys equal to them. */
    if ((s = get_int(c, v, "hidden_size", 1152, 1, MAX_HIDDEN, &cfg->vision_hidden)) ||
        (s = get_int(c, v, "intermediate_size", 3072, 1, MAX_INTERMEDIATE, &cfg->vision_intermediate)) ||
        (s = get_int(c, v, "num_hidden_layers", 12, 1, MAX_LAYERS, &cfg->vision_layers)) ||
        (s = get_int(c, v, "num_attention_heads", 16, 1, MAX_HEADS, &cfg->vision_heads)) ||
        (s = get_int(c, v, "patch_size", 32, 1, MAX_IMAGE_SIZE, &cfg->patch_size)) ||
        (s = get_int(c, v, "image_size", 224, 1, MAX_IMAGE_SIZE, &cfg->image_size)) ||
        (s = get_real(c, v, "layer_norm_eps", 1e-6, &eps)) || (s = check_act(c, v, "gelu_pytorch_tanh")))
        return s;
    int32_t channels = 0;
    if ((s = get_int(c, v, "num_channels", 3, 1, 64, &channels))) return s;
    if (channels != 3)
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: vision_config.num_channels is %d; only RGB (3) is supported", c->path,
                       channels);
    cfg->vision_norm_eps = eps;
    if (cfg->vision_hidden % cfg->vision_heads)
        return sv_fail(SV_ERR_FORMAT, "%s: vision hidden_size %d is not divisible by num_attention_heads %d", c->path,
                       cfg->vision_hidden, cfg->vision_heads);
    if (cfg->image_size < cfg->patch_size)
        return sv_fail(SV_ERR_FORMAT, "%s: vision image_size %d is smaller than patch_size %d", c->path,
                       cfg->image_size, cfg->patch_size);
    return SV_OK;
}

static sv_status parse_text(const cfg_ctx *c, const json_value *t, sv_config *cfg) {
    sv_status s;
    double eps = 0;
    int attention_bias = 0, mlp_bias = 0;
    /* Defaults are LlamaConfig's, used when a key is absent. */
    if ((s = get_int(c, t, "hidden_size", 4096, 1, MAX_HIDDEN, &cfg->text_hidden)) ||
        (s = get_int(c, t, "intermediate_size", 11008, 1, MAX_INTERMEDIATE, &cfg->text_intermediate)) ||
        (s = get_int(c, t, "num_hidden_layers", 32, 1, MAX_LAYERS, &cfg->text_layers)) ||
        (s = get_int(c, t, "num_attention_heads", 32, 1, MAX_HEADS, &cfg->text_heads)) ||
        (s = get_int(c, t, "num_key_value_heads", cfg->text_heads, 1, MAX_HEADS, &cfg->text_kv_heads)) ||
        (s = get_int(c, t, "vocab_size", 32000, 1, MAX_VOCAB, &cfg->vocab_size)) ||
        (s = get_int(c, t, "max_position_embeddings", 2048, 1, MAX_POSITIONS, &cfg->max_position_embeddings)) ||
        (s = get_real(c, t, "rms_norm_eps", 1e-6, &eps)) || (s = get_flag(c, t, "attention_bias", &attention_bias)) ||
        (s = get_flag(c, t, "mlp_bias", &mlp_bias)) || (s = check_act(c, t, "silu")))
        return s;
    cfg->rms_norm_eps = eps;
    cfg->attention_bias = attention_bias;
    cfg->mlp_bias = mlp_bias;
    int32_t dflt_head_dim = cfg->text_hidden / cfg->text_heads;
    if ((s = get_int(c, t, "head_dim", dflt_head_dim, 2, 4096, &cfg->head_dim))) return s;
    if (cfg->head_dim % 2)
        return sv_fail(SV_ERR_FORMAT, "%s: text head_dim %d must be even for rotary embeddings", c->path, cfg->head_dim);
    if (cfg->text_heads % cfg->text_kv_heads)
        return sv_fail(SV_ERR_FORMAT, "%s: text num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       c->path, cfg->text_heads, cfg->text_kv_heads);

    /* rope_theta sits at the top of text_config in older files and inside
     * rope_parameters in newer ones; only plain (unscaled) RoPE is run. */
    double theta = 10000.0;
    const json_value *rp = json_get(t, "rope_parameters");
    if (rp && rp->type != JSON_OBJECT && rp->type != JSON_NULL)
        return sv_fail(SV_ERR_FORMAT, "%s: text_config.rope_parameters must be an object", c->path);
    const json_value *scaling = json_get(t, "rope_scaling");
    if (scaling && scaling->type != JSON_NULL) {
        const char *type = json_get_string(scaling, "rope_type");
        if (!type) type = json_get_string(scaling, "type");
        if (!type || strcmp(type, "default") != 0)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: text_config.rope_scaling '%s' is not supported", c->path,
                           type ? type : "?");
    }
    if (rp && rp->type == JSON_OBJECT) {
        const char *type = json_get_string(rp, "rope_type");
        if (type && strcmp(type, "default") != 0)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: text_config.rope_parameters.rope_type '%s' is not supported",
                           c->path, type);
        cfg_ctx rc = {c->path, "text_config.rope_parameters"};
        if ((s = get_real(&rc, rp, "rope_theta", theta, &theta))) return s;
    }
    if ((s = get_real(c, t, "rope_theta", theta, &theta))) return s;
    cfg->rope_theta = theta;
    return SV_OK;
}

sv_status sv_parse_config(const char *text, size_t len, const char *path, sv_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    char err[256];
    json_doc *doc = json_parse(text, len, err, sizeof err);
    if (!doc) return sv_fail(SV_ERR_FORMAT, "%s: not valid JSON (%s)", path, err);
    const json_value *root = json_root(doc);
    sv_status s = SV_OK;
    cfg_ctx top = {path, ""}, vc = {path, "vision_config"}, tc = {path, "text_config"};
    const json_value *vision = json_get(root, "vision_config");
    const json_value *textc = json_get(root, "text_config");
    /* transformers builds an absent (or null) vision_config from the class defaults alone. */
    json_value no_keys = {.type = JSON_OBJECT};
    if (!vision || vision->type == JSON_NULL) vision = &no_keys;
    int family = root->type == JSON_OBJECT ? family_of(root) : -1;
    if (root->type != JSON_OBJECT) {
        s = sv_fail(SV_ERR_FORMAT, "%s: not a JSON object", path);
    } else if (family < 0) {
        const char *type = json_get_string(root, "model_type");
        s = sv_fail(SV_ERR_UNSUPPORTED,
                    "%s: unsupported architecture (model_type '%s'); smolvision runs SmolVLM models "
                    "(Idefics3ForConditionalGeneration) and SmolVLM2 models (SmolVLMForConditionalGeneration)",
                    path, type ? type : "missing");
    } else if (vision->type != JSON_OBJECT || !textc || textc->type != JSON_OBJECT) {
        s = sv_fail(SV_ERR_FORMAT, "%s: vision_config and text_config must both be objects", path);
    }
    int tie = 0;
    if (s == SV_OK) s = parse_vision(&vc, vision, cfg);
    if (s == SV_OK) s = parse_text(&tc, textc, cfg);
    if (s == SV_OK) s = get_int(&top, root, "scale_factor", 2, 1, 64, &cfg->scale_factor);
    if (s == SV_OK) s = get_int(&top, root, "image_token_id", 128257, 0, INT32_MAX, &cfg->image_token_id);
    /* transformers (5.x) ties the head by the top-level flag alone; the
     * text_config copy is ignored, and an absent flag means untied. */
    if (s == SV_OK) s = get_flag(&top, root, "tie_word_embeddings", &tie);
    json_free(doc);
    if (s != SV_OK) return s;
    cfg->tie_word_embeddings = tie;
    cfg->family = family;

    /* The patch conv has stride patch_size and no padding: pixels past the
     * last whole patch are ignored (SmolVLM-Instruct: 384 / 14 -> 27). */
    int32_t side = cfg->image_size / cfg->patch_size;
    if (side % cfg->scale_factor)
        return sv_fail(SV_ERR_FORMAT, "%s: %d patches per side is not a multiple of scale_factor %d", path, side,
                       cfg->scale_factor);
    cfg->image_seq_len = (side / cfg->scale_factor) * (side / cfg->scale_factor);
    if (cfg->image_token_id >= cfg->vocab_size)
        return sv_fail(SV_ERR_FORMAT, "%s: image_token_id %d is outside the vocabulary of %d", path,
                       cfg->image_token_id, cfg->vocab_size);
    return SV_OK;
}

/* ---- tensor binding ---- */

static int is_float_dtype(st_dtype t) { return t == ST_F32 || t == ST_F16 || t == ST_BF16; }

static sv_status find_checked(const sv_model *m, const char *name, int ndim, const int64_t *shape,
                              const st_tensor **out) {
    const st_tensor *t = st_find(&m->st, name);
    if (!t) return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' is missing", m->dir, name);
    if (!is_float_dtype(t->dtype))
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16", m->dir, name,
                       st_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[128] = "", got[128] = "";
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "", (long long)shape[i]);
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has shape [%s]; the config needs [%s]", m->dir, name, got,
                       want);
    }
    *out = t;
    return SV_OK;
}

static sv_status bind_matrix(const sv_model *m, const char *name, int64_t rows, int64_t cols, sv_matrix *out) {
    const st_tensor *t = NULL;
    int64_t shape[2] = {rows, cols};
    sv_status s = find_checked(m, name, 2, shape, &t);
    if (s == SV_OK) *out = (sv_matrix){t->data, t->dtype, rows, cols};
    return s;
}

/* 1-D weights are small, so they are widened once to fp32 and owned.  They are read with st_read,
 * not through the mapping: hundreds of them lie between the big matrices, and touching each would
 * map its whole 2 MiB page-cache folio (450 MB of RSS for the 2.2B model). */
static sv_status bind_vector(sv_model *m, const char *name, int64_t n, const float **out) {
    const st_tensor *t = NULL;
    sv_status s = find_checked(m, name, 1, &n, &t);
    if (s != SV_OK) return s;
    float **list = realloc(m->vectors, (m->n_vectors + 1) * sizeof *list);
    if (!list) return sv_fail(SV_ERR_NOMEM, "out of memory binding '%s'", name);
    m->vectors = list;
    float *v = malloc((size_t)n * sizeof *v);
    void *raw = malloc(t->nbytes ? t->nbytes : 1);
    if (!v || !raw) {
        free(v);
        free(raw);
        return sv_fail(SV_ERR_NOMEM, "out of memory binding '%s'", name);
    }
    m->vectors[m->n_vectors++] = v;
    st_read(&m->st, t, raw);
    sv_matrix_row(v, &(sv_matrix){raw, t->dtype, 1, n}, 0);
    free(raw);
    *out = v;
    return SV_OK;
}

static sv_status bind_vision(sv_model *m) {
    const sv_config *c = &m->cfg;
    vision_weights *w = &m->vision;
    int64_t d = c->vision_hidden, f = c->vision_intermediate, p = c->patch_size;
    int64_t side = c->image_size / c->patch_size;
    const char *V = "model.vision_model.";
    char name[256];
    sv_status s;
    const st_tensor *conv = NULL;
    int64_t conv_shape[4] = {d, 3, p, p};
    snprintf(name, sizeof name, "%sembeddings.patch_embedding.weight", V);
    if ((s = find_checked(m, name, 4, conv_shape, &conv))) return s;
    w->patch = (sv_matrix){conv->data, conv->dtype, d, 3 * p * p};
    snprintf(name, sizeof name, "%sembeddings.patch_embedding.bias", V);
    if ((s = bind_vector(m, name, d, &w->patch_b))) return s;
    snprintf(name, sizeof name, "%sembeddings.position_embedding.weight", V);
    if ((s = bind_matrix(m, name, side * side, d, &w->pos))) return s;

    w->layers = calloc((size_t)c->vision_layers, sizeof *w->layers);
    if (!w->layers) return sv_fail(SV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < c->vision_layers; i++) {
        vision_layer *l = &w->layers[i];
        struct { const char *name; const float **vec; sv_matrix *mat; int64_t rows, cols; } parts[] = {
            {"layer_norm1.weight", &l->ln1_w, NULL, d, 0},     {"layer_norm1.bias", &l->ln1_b, NULL, d, 0},
            {"self_attn.q_proj.weight", NULL, &l->q, d, d},    {"self_attn.q_proj.bias", &l->q_b, NULL, d, 0},
            {"self_attn.k_proj.weight", NULL, &l->k, d, d},    {"self_attn.k_proj.bias", &l->k_b, NULL, d, 0},
            {"self_attn.v_proj.weight", NULL, &l->v, d, d},    {"self_attn.v_proj.bias", &l->v_b, NULL, d, 0},
            {"self_attn.out_proj.weight", NULL, &l->o, d, d},  {"self_attn.out_proj.bias", &l->o_b, NULL, d, 0},
            {"layer_norm2.weight", &l->ln2_w, NULL, d, 0},     {"layer_norm2.bias", &l->ln2_b, NULL, d, 0},
            {"mlp.fc1.weight", NULL, &l->fc1, f, d},           {"mlp.fc1.bias", &l->fc1_b, NULL, f, 0},
            {"mlp.fc2.weight", NULL, &l->fc2, d, f},           {"mlp.fc2.bias", &l->fc2_b, NULL, d, 0},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
            snprintf(name, sizeof name, "%sencoder.layers.%d.%s", V, i, parts[k].name);
            s = parts[k].mat ? bind_matrix(m, name, parts[k].rows, parts[k].cols, parts[k].mat)
                             : bind_vector(m, name, parts[k].rows, parts[k].vec);
            if (s) return s;
        }
    }
    snprintf(name, sizeof name, "%spost_layernorm.weight", V);
    if ((s = bind_vector(m, name, d, &w->post_ln_w))) return s;
    snprintf(name, sizeof name, "%spost_layernorm.bias", V);
    if ((s = bind_vector(m, name, d, &w->post_ln_b))) return s;
    int64_t sf = c->scale_factor;
    return bind_matrix(m, "model.connector.modality_projection.proj.weight", c->text_hidden, d * sf * sf,
                       &w->connector);
}

static sv_status bind_text(sv_model *m) {
    const sv_config *c = &m->cfg;
    text_weights *w = &m->text;
    int64_t d = c->text_hidden, f = c->text_intermediate;
    int64_t qd = (int64_t)c->text_heads * c->head_dim, kvd = (int64_t)c->text_kv_heads * c->head_dim;
    /* Two namings exist: transformers' current layout, and the older one with
     * an inner "model." and the head inside text_model. */
    int nested = st_find(&m->st, "model.text_model.embed_tokens.weight") == NULL &&
                 st_find(&m->st, "model.text_model.model.embed_tokens.weight") != NULL;
    const char *T = nested ? "model.text_model.model." : "model.text_model.";
    char name[256];
    sv_status s;
    snprintf(name, sizeof name, "%sembed_tokens.weight", T);
    if ((s = bind_matrix(m, name, c->vocab_size, d, &w->embed))) return s;

    w->layers = calloc((size_t)c->text_layers, sizeof *w->layers);
    if (!w->layers) return sv_fail(SV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < c->text_layers; i++) {
        text_layer *l = &w->layers[i];
        int ab = c->attention_bias, mb = c->mlp_bias;
        struct { const char *name; const float **vec; sv_matrix *mat; int64_t rows, cols; int wanted; } parts[] = {
            {"input_layernorm.weight", &l->attn_norm, NULL, d, 0, 1},
            {"self_attn.q_proj.weight", NULL, &l->q, qd, d, 1},  {"self_attn.q_proj.bias", &l->q_b, NULL, qd, 0, ab},
            {"self_attn.k_proj.weight", NULL, &l->k, kvd, d, 1}, {"self_attn.k_proj.bias", &l->k_b, NULL, kvd, 0, ab},
            {"self_attn.v_proj.weight", NULL, &l->v, kvd, d, 1}, {"self_attn.v_proj.bias", &l->v_b, NULL, kvd, 0, ab},
            {"self_attn.o_proj.weight", NULL, &l->o, d, qd, 1},  {"self_attn.o_proj.bias", &l->o_b, NULL, d, 0, ab},
            {"post_attention_layernorm.weight", &l->mlp_norm, NULL, d, 0, 1},
            {"mlp.gate_proj.weight", NULL, &l->gate, f, d, 1},   {"mlp.gate_proj.bias", &l->gate_b, NULL, f, 0, mb},
            {"mlp.up_proj.weight", NULL, &l->up, f, d, 1},       {"mlp.up_proj.bias", &l->up_b, NULL, f, 0, mb},
            {"mlp.down_proj.weight", NULL, &l->down, d, f, 1},   {"mlp.down_proj.bias", &l->down_b, NULL, d, 0, mb},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
            if (!parts[k].wanted) continue;
            snprintf(name, sizeof name, "%slayers.%d.%s", T, i, parts[k].name);
            s = parts[k].mat ? bind_matrix(m, name, parts[k].rows, parts[k].cols, parts[k].mat)
                             : bind_vector(m, name, parts[k].rows, parts[k].vec);
            if (s) return s;
        }
    }
    snprintf(name, sizeof name, "%snorm.weight", T);
    if ((s = bind_vector(m, name, d, &w->norm))) return s;
    if (c->tie_word_embeddings) {
        w->lm_head = w->embed;
        return SV_OK;
    }
    const char *head = nested ? "model.text_model.lm_head.weight" : "lm_head.weight";
    return bind_matrix(m, head, c->vocab_size, d, &w->lm_head);
}

/* ---- lifetime ---- */

/* tokenizer.json is optional (the engine can run on ids), but a present one must load. */
static sv_status load_tokenizer(sv_model *m) {
    size_t n = strlen(m->dir) + sizeof "/tokenizer.json";
    char *path = malloc(n);
    if (!path) return sv_fail(SV_ERR_NOMEM, "out of memory");
    snprintf(path, n, "%s/tokenizer.json", m->dir);
    /* Only a truly absent file is optional: a link loop or unreadable one is an error. */
    sv_status s = access(path, F_OK) != 0 && errno == ENOENT ? SV_OK : sv_tokenizer_load(path, &m->tokenizer);
    free(path);
    return s;
}

sv_status sv_model_load(const char *dir, int32_t n_threads, sv_model **out) {
    sv_load_options opts = {n_threads, SV_PRECISION_FP32, SV_QUANT_NONE, NULL, NULL, NULL};
    return sv_model_load_ex(dir, &opts, out);
}

sv_status sv_model_load_ex(const char *dir, const sv_load_options *opts, sv_model **out) {
    *out = NULL;
    sv_clear_error();
    sv_load_options o = opts ? *opts : (sv_load_options){0, SV_PRECISION_FP32, SV_QUANT_NONE, NULL, NULL, NULL};
    if (!dir || !dir[0]) return sv_fail(SV_ERR_ARG, "no model directory given");
    if (o.precision != SV_PRECISION_FP32 && o.precision != SV_PRECISION_BF16)
        return sv_fail(SV_ERR_ARG, "precision is %d, not %d (fp32) or %d (bf16)", o.precision, SV_PRECISION_FP32,
                       SV_PRECISION_BF16);
    if (o.quant != SV_QUANT_NONE && o.quant != SV_QUANT_Q8 && o.quant != SV_QUANT_Q4)
        return sv_fail(SV_ERR_ARG, "quant is %d, not %d (none), %d (q8) or %d (q4)", o.quant, SV_QUANT_NONE,
                       SV_QUANT_Q8, SV_QUANT_Q4);
    int32_t n_threads = o.n_threads;
    if (n_threads > MAX_THREADS) return sv_fail(SV_ERR_ARG, "%d threads asked for; at most %d", n_threads, MAX_THREADS);
    sv_model *m = calloc(1, sizeof *m);
    if (!m) return sv_fail(SV_ERR_NOMEM, "out of memory");
    m->dir = strdup(dir);
    sv_profile *profile = calloc(1, sizeof *profile);
    m->ctx = sv_ctx_make(NULL, (sv_precision)o.precision, profile);
    if (!m->dir || !profile) {
        free(m->dir);
        free(profile);
        free(m);
        return sv_fail(SV_ERR_NOMEM, "out of memory");
    }
    size_t n = strlen(dir) + sizeof "/config.json";
    char *path = malloc(n);
    sv_status s = SV_OK;
    if (!path) s = sv_fail(SV_ERR_NOMEM, "out of memory");
    if (s == SV_OK) {
        snprintf(path, n, "%s/config.json", dir);
        char err[512];
        size_t len;
        char *text = json_read_file(path, MAX_CONFIG_BYTES, &len, err, sizeof err);
        if (!text) s = sv_fail(SV_ERR_IO, "%s", err);
        else s = sv_parse_config(text, len, path, &m->cfg);
        free(text);
    }
    free(path);
    if (s == SV_OK) s = st_open_dir(&m->st, dir);
    if (s == SV_OK) s = bind_vision(m);
    if (s == SV_OK) s = bind_text(m);
    if (s == SV_OK) s = load_tokenizer(m);
    if (s != SV_OK) {
        sv_model_free(m);
        return s;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    m->n_threads = n_threads > 0 ? n_threads : (cores > 0 ? (int)cores : 1);
    m->ctx.pool = sv_pool_create(m->n_threads);
    if (!m->ctx.pool) {
        sv_model_free(m);
        return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", m->n_threads);
    }
    s = sv_quant_apply(m, o.quant, o.quant_cache_path, o.on_log, o.log_user);
    if (s != SV_OK) {
        sv_model_free(m);
        return s;
    }
    *out = m;
    return SV_OK;
}

void sv_model_free(sv_model *m) {
    if (!m) return;
    sv_decoder_free(m->decoder);
    sv_seq_free(m->oneshot);
    for (size_t i = 0; i < m->n_vectors; i++) free(m->vectors[i]);
    free(m->vectors);
    sv_pool_free(m->ctx.pool);
    if (m->qmap) munmap(m->qmap, m->qmap_bytes);
    sv_tokenizer_free(m->tokenizer);
    free(m->vision.layers);
    free(m->text.layers);
    st_close(&m->st);
    free(m->dir);
    free(m->ctx.profile);
    free(m);
}

const sv_config *sv_model_config(const sv_model *m) { return &m->cfg; }

int32_t sv_model_precision(const sv_model *m) { return m->ctx.precision; }

int32_t sv_model_quant(const sv_model *m) { return m->quant; }

sv_tokenizer *sv_model_tokenizer(sv_model *m) { return m ? m->tokenizer : NULL; }
