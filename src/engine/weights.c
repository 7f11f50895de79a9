/* SPDX-License-Identifier: MIT */
/*
 * Block geometry of the tensor element types declared in weights.h (GGML block layouts for the
 * quantized types), shared by every loader and by the kernels.
 */
#include "engine/weights.h"

struct type_info {
    size_t block_elems;
    size_t block_bytes;
    const char *name;
};

static const struct type_info *type_info(enum br_tensor_type type)
{
    static const struct type_info table[] = {
        [BR_TENSOR_F32] = {1, 4, "f32"},       [BR_TENSOR_F16] = {1, 2, "f16"},
        [BR_TENSOR_Q8_0] = {32, 34, "q8_0"},   [BR_TENSOR_Q4_0] = {32, 18, "q4_0"},
        [BR_TENSOR_Q4_K] = {256, 144, "q4_k"}, [BR_TENSOR_Q5_0] = {32, 22, "q5_0"},
        [BR_TENSOR_Q6_K] = {256, 210, "q6_k"},
    };
    if ((unsigned)type >= sizeof(table) / sizeof(table[0])) {
        return NULL;
    }
    return &table[type];
}

size_t br_tensor_block_elems(enum br_tensor_type type)
{
    const struct type_info *t = type_info(type);
    return t ? t->block_elems : 0;
}

size_t br_tensor_block_bytes(enum br_tensor_type type)
{
    const struct type_info *t = type_info(type);
    return t ? t->block_bytes : 0;
}

size_t br_tensor_row_bytes(enum br_tensor_type type, size_t cols)
{
    const struct type_info *t = type_info(type);
    if (!t || cols % t->block_elems != 0) {
        return 0;
    }
    size_t blocks = cols / t->block_elems;
    if (blocks > (size_t)-1 / t->block_bytes) {
        return 0;
    }
    return blocks * t->block_bytes;
}

const char *br_tensor_type_name(enum br_tensor_type type)
{
    const struct type_info *t = type_info(type);
    return t ? t->name : "unknown";
}
