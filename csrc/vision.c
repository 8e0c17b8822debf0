/* vision.c - the vision encoder: SigLIP tower, pixel shuffle and connector
 * projection, equal to transformers' Idefics3Model.get_image_features for
 * full (unpadded) S x S tiles.
 *
 * Per tile: patch embedding (the stride-p conv as a matmul over gathered
 * patches) + learned position embeddings, N pre-LN encoder layers (biased
 * multi-head self-attention over all patches of the tile, gelu-tanh MLP),
 * post-LayerNorm, pixel shuffle (scale^2 neighbouring patches become one
 * token) and the bias-free connector projection into the text hidden size.
 *
 * All tiles of a pass go through every weight matmul as one batch of rows
 * (x is [tiles*patches, hidden]); attention runs per tile (kernels/attention.c).
 * Activations live in scratch
 * allocated once per call and freed before it returns (nothing is held
 * between calls); a call with more tiles than one pass takes (PASS_MAX_TILES,
 * or fewer when they would exceed PASS_BUDGET_BYTES) runs them in several
 * equal passes, so memory stays bounded however many tiles are passed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kernels.h"
#include "model.h"

/* No real batch of images comes near this; beyond it the count is a caller bug. */
#define MAX_TILES 4096
/* A pass holds at most this many tiles and bytes of activations; larger calls
 * run in several equal passes.  The GEMM streams all of a pass's rows once per
 * panel of 32 weight rows, so past ~2 tiles (1458 rows, 3.4 MB of BF16
 * activations at SmolVLM's width) those rows fall out of cache and a tile gets
 * slower, not faster (6 tiles, 2 threads: 1.76-1.84 s/tile in passes of 2,
 * 1.80-1.93 in passes of 4, 1.96-1.99 in one pass). */
#define PASS_MAX_TILES 2
#define PASS_BUDGET_BYTES ((size_t)256 << 20)

/* Shapes of one encode, all derived from the config. */
typedef struct {
    int64_t side;     /* patches per tile side: image_size / patch_size, rounded down */
    int64_t patches;  /* patches per tile: side^2 */
    int64_t hidden, inter, heads, head_dim, patch_dim; /* patch_dim = 3 * p * p */
    int64_t wide;     /* columns of the wide scratch: max(3 * hidden, inter, patch_dim) */
    int64_t scale, seq_len, text_hidden;
    float eps;
} vision_shape;

/* Activations of one pass of up to `tiles` tiles (rows = tiles * patches). */
typedef struct {
    float *x;       /* [rows, hidden] residual stream; later the pixel-shuffled tokens */
    float *t;       /* [rows, hidden] normed input, attention output, MLP output */
    float *wide;    /* [rows, wide]: gathered patches, or q | k | v, or the MLP hidden */
    sv_self_attention *attention; /* one tile's workspace */
} vision_scratch;

static vision_shape shape_of(const sv_config *c) {
    vision_shape s;
    s.side = c->image_size / c->patch_size;
    s.patches = s.side * s.side;
    s.hidden = c->vision_hidden;
    s.inter = c->vision_intermediate;
    s.heads = c->vision_heads;
    s.head_dim = s.hidden / s.heads;
    s.patch_dim = 3 * (int64_t)c->patch_size * c->patch_size;
    s.wide = 3 * s.hidden;
    if (s.inter > s.wide) s.wide = s.inter;
    if (s.patch_dim > s.wide) s.wide = s.patch_dim;
    s.scale = c->scale_factor;
    s.seq_len = c->image_seq_len;
    s.text_hidden = c->text_hidden;
    s.eps = (float)c->vision_norm_eps;
    return s;
}

/* a * b into *out; 0 on overflow. */
static int mul_size(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static void scratch_free(vision_scratch *sc) {
    free(sc->x);
    free(sc->t);
    free(sc->wide);
    sv_self_attention_free(sc->attention);
    memset(sc, 0, sizeof *sc);
}

/* Allocates activations for passes of `tiles` tiles. */
static sv_status scratch_alloc(vision_scratch *sc, const vision_shape *s, int64_t tiles, const sv_model *m) {
    size_t rows, n_x, n_wide;
    memset(sc, 0, sizeof *sc);
    if (!mul_size((size_t)tiles, (size_t)s->patches, &rows) || !mul_size(rows, (size_t)s->hidden, &n_x) ||
        !mul_size(rows, (size_t)s->wide, &n_wide) || n_wide > SIZE_MAX / sizeof(float) ||
        n_x > SIZE_MAX / sizeof(float))
        return sv_fail(SV_ERR_NOMEM, "vision encoder: activations for %lld tiles overflow the address space",
                       (long long)tiles);
    sc->x = malloc(n_x * sizeof(float));
    sc->t = malloc(n_x * sizeof(float));
    sc->wide = malloc(n_wide * sizeof(float));
    /* Attention in BF16 only where the weights' products are (BF16 weights): "bf16" with F32 weights is fp32. */
    sc->attention = sv_self_attention_new(&m->ctx, m->vision.layers[0].q.dtype, s->patches, s->heads, s->head_dim);
    if (!sc->x || !sc->t || !sc->wide || !sc->attention) {
        scratch_free(sc);
        return sv_fail(SV_ERR_NOMEM, "vision encoder: out of memory for the activations of %lld tiles",
                       (long long)tiles);
    }
    return SV_OK;
}

/* ---- the stages of one pass ---- */

/* rows[tile*patches + py*side + px, (c*p + y)*p + x] = pixels[tile, c, py*p + y, px*p + x]
 * for pixels[tiles, 3, S, S]: each patch flattened in the conv kernel's (c, y, x)
 * order, patches in raster order.  Like the stride-p conv, this ignores the
 * pixels past the last whole patch when S is not a multiple of p. */
static void gather_patches(float *rows, const float *pixels, int64_t tiles, int64_t S, int64_t side, int64_t p) {
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t py = 0; py < side; py++)
            for (int64_t px = 0; px < side; px++) {
                float *row = rows + ((t * side + py) * side + px) * 3 * p * p;
                for (int64_t c = 0; c < 3; c++)
                    for (int64_t y = 0; y < p; y++)
                        memcpy(row + (c * p + y) * p, pixels + ((t * 3 + c) * S + py * p + y) * S + px * p,
                               (size_t)p * sizeof *row);
            }
}

/* x[tiles*patches, hidden] = patch embedding + position embedding of each tile's pixels. */
static void embed(const sv_model *m, const vision_shape *s, vision_scratch *sc, const float *pixels, int64_t tiles) {
    const vision_weights *w = &m->vision;
    int64_t P = s->patches;
    gather_patches(sc->wide, pixels, tiles, m->cfg.image_size, s->side, m->cfg.patch_size);
    sv_matmul(&m->ctx, sc->x, sc->wide, tiles * P, &w->patch, w->patch_b);
    /* Position ids: transformers buckets fractional patch coordinates over a
     * patch mask; for a full tile that gives patch i position i (checked by
     * tests/test_vision.py for the fixture and SmolVLM grids; for some other
     * grids, e.g. 19 or 25 patches a side, its float32 rounding repeats an
     * id, and this engine keeps the exact ids).  Tiles are
     * always full here: padding only ever makes whole all-zero tiles, which
     * sv_encode_images refuses. */
    for (int64_t i = 0; i < P; i++) sv_matrix_row(sc->t + i * s->hidden, &w->pos, i);
    for (int64_t t = 0; t < tiles; t++) sv_add_rows(&m->ctx, sc->x + t * P * s->hidden, sc->t, P, s->hidden);
}

/* One pre-LN encoder layer on x[rows, hidden], t holding ln1(x) already; it leaves t = next(x) for the
 * layernorm that comes next (the next layer's ln1, or the post-layernorm), fused with the residual add. */
static void encoder_layer(const sv_model *m, const vision_shape *s, const vision_layer *l, const float *next_w,
                          const float *next_b, vision_scratch *sc, int64_t tiles) {
    const sv_ctx *ctx = &m->ctx;
    int64_t rows = tiles * s->patches, H = s->hidden, tile = s->patches * H;
    float *q = sc->wide, *k = q + rows * H, *v = k + rows * H;
    const sv_product qkv[] = {{q, &l->q, l->q_b}, {k, &l->k, l->k_b}, {v, &l->v, l->v_b}};
    sv_matmul_shared(ctx, sc->t, rows, qkv, 3);
    for (int64_t t = 0; t < tiles; t++)
        sv_attend_self(ctx, sc->attention, sc->t + t * tile, q + t * tile, k + t * tile, v + t * tile);
    sv_matmul(ctx, q, sc->t, rows, &l->o, l->o_b); /* q is dead: reuse it for the projection */
    float *hid = sc->wide; /* q, k, v are dead */
    sv_add_layernorm_rows(ctx, sc->x, q, sc->t, l->ln2_w, l->ln2_b, rows, H, s->eps); /* x += attention, t = ln2(x) */
    sv_matmul(ctx, hid, sc->t, rows, &l->fc1, l->fc1_b);
    sv_gelu_rows(ctx, hid, rows, s->inter);
    sv_matmul(ctx, sc->t, hid, rows, &l->fc2, l->fc2_b);
    sv_add_layernorm_rows(ctx, sc->x, sc->t, sc->t, next_w, next_b, rows, H, s->eps); /* x += mlp, t = next(x) */
}

/* Idefics3Connector.pixel_shuffle, per tile: out[tiles*seq_len, hidden*scale^2] from
 * in[tiles*patches, hidden].  Token (i, j) of the (side/scale)^2 grid is the
 * concatenation over (a, b) in raster order of patch (i*scale + a, j*scale + b):
 *   out[i*(side/scale) + j, (a*scale + b)*hidden + d] = in[(i*scale + a)*side + j*scale + b, d]
 * which is what the reference's view/permute/reshape sequence works out to. */
static void pixel_shuffle(float *out, const float *in, const vision_shape *s, int64_t tiles) {
    int64_t side = s->side, sf = s->scale, grid = side / sf, H = s->hidden;
    for (int64_t t = 0; t < tiles; t++) {
        const float *tin = in + t * s->patches * H;
        float *tout = out + t * s->patches * H;
        for (int64_t i = 0; i < grid; i++)
            for (int64_t j = 0; j < grid; j++)
                for (int64_t a = 0; a < sf; a++)
                    for (int64_t b = 0; b < sf; b++)
                        memcpy(tout + ((i * grid + j) * sf * sf + a * sf + b) * H,
                               tin + ((i * sf + a) * side + j * sf + b) * H, (size_t)H * sizeof *tout);
    }
}

/* The layernorm that layer i begins with (its ln1), or past the last layer the post-layernorm. */
static void norm_before(const sv_model *m, int i, const float **w, const float **b) {
    const vision_weights *v = &m->vision;
    int last = i >= m->cfg.vision_layers;
    *w = last ? v->post_ln_w : v->layers[i].ln1_w;
    *b = last ? v->post_ln_b : v->layers[i].ln1_b;
}

/* out[tiles*seq_len, text_hidden] = the image features of `tiles` tiles. */
static void encode_pass(const sv_model *m, const vision_shape *s, vision_scratch *sc, const float *pixels,
                        int64_t tiles, float *out) {
    const vision_weights *w = &m->vision;
    int64_t rows = tiles * s->patches;
    const float *norm_w, *norm_b;
    embed(m, s, sc, pixels, tiles);
    norm_before(m, 0, &norm_w, &norm_b);
    sv_layernorm_rows(&m->ctx, sc->t, sc->x, norm_w, norm_b, rows, s->hidden, s->eps);
    for (int i = 0; i < m->cfg.vision_layers; i++) {
        norm_before(m, i + 1, &norm_w, &norm_b);
        encoder_layer(m, s, &w->layers[i], norm_w, norm_b, sc, tiles);
    }
    pixel_shuffle(sc->x, sc->t, s, tiles); /* t: post_ln(x) */
    sv_matmul(&m->ctx, out, sc->x, tiles * s->seq_len, &w->connector, NULL);
}

/* 1 if tile[n] is all zeros (+0.0 or -0.0). */
static int all_zero(const float *tile, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (tile[i] != 0.0f) return 0;
    return 1;
}

sv_status sv_encode_images(sv_model *m, const float *pixel_values, int32_t n_tiles, float *out) {
    if (!m || !pixel_values || !out) return sv_fail(SV_ERR_ARG, "sv_encode_images: NULL argument");
    if (n_tiles <= 0 || n_tiles > MAX_TILES)
        return sv_fail(SV_ERR_ARG, "sv_encode_images: n_tiles is %d; expected 1 to %d", n_tiles, MAX_TILES);
    vision_shape s = shape_of(&m->cfg);
    int64_t tile_floats = 3 * (int64_t)m->cfg.image_size * m->cfg.image_size;
    /* transformers drops all-zero tiles (batch padding) before encoding, so
     * they have no features; rather than return fewer rows than asked for,
     * refuse them. */
    for (int64_t t = 0; t < n_tiles; t++)
        if (all_zero(pixel_values + t * tile_floats, tile_floats))
            return sv_fail(SV_ERR_ARG,
                           "sv_encode_images: tile %lld is all zeros; transformers drops such padding tiles, "
                           "so pass only real tiles", (long long)t);

    size_t tile_bytes = (size_t)s.patches * (size_t)(2 * s.hidden + s.wide) * sizeof(float);
    int64_t per_pass_max = (int64_t)(PASS_BUDGET_BYTES / tile_bytes);
    if (per_pass_max > PASS_MAX_TILES) per_pass_max = PASS_MAX_TILES;
    if (per_pass_max < 1) per_pass_max = 1;
    int64_t passes = (n_tiles + per_pass_max - 1) / per_pass_max;
    int64_t per_pass = (n_tiles + passes - 1) / passes; /* equal passes rather than a full one and a remnant */

    vision_scratch sc;
    sv_status st = scratch_alloc(&sc, &s, per_pass, m);
    if (st) return st;
    sv_profile_phase_begin(m->ctx.profile, SV_PHASE_VISION);
    for (int64_t first = 0; first < n_tiles; first += per_pass) {
        int64_t tiles = n_tiles - first < per_pass ? n_tiles - first : per_pass;
        encode_pass(m, &s, &sc, pixel_values + first * tile_floats, tiles, out + first * s.seq_len * s.text_hidden);
    }
    sv_profile_phase_end(m->ctx.profile);
    scratch_free(&sc);
    return SV_OK;
}
