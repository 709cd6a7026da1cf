"""A deliberately naive ConvPrompt prompt computation: the yardstick for the fast one.

It follows the method's description literally: for every sample, prompted
layer, head, side and generator, one ``conv2d`` of the shared embedding with that
generator's kernel, weighted by the cosine between the matched query and the
generator's key. Used by the tests (equivalence to 1e-5) and by
``benchmarks/speed.py`` (the speed-up of the vectorised path).
"""
import torch
import torch.nn.functional as F

from avalanche_convprompt.methods.convprompt.prompt_pool import ConvPromptPool


def naive_prompts(pool: ConvPromptPool, queries, dtype=torch.float64):
    """Loop over samples, layers, heads, sides and generators; one conv2d each.

    Returns, per prompted layer, the (key, value) prefixes the block receives:
    its own generated prompt plus the previous prompted layer's, accumulated
    in ``dtype`` (float64 by default, so the reference itself adds no error).
    """
    weights = [w for w in pool.conv_weights]
    biases = [b for b in pool.conv_biases]
    gens = [(t, j) for t, w in enumerate(weights) for j in range(w.shape[3])]
    keys = torch.cat(list(pool.keys), 0)
    D, H = len(pool.prompt_layers), pool.num_heads
    L, Dh = pool.prompt_length, pool.head_dim
    B = queries[0].shape[0]
    generated = torch.zeros(D, B, H, 2, L, Dh, dtype=dtype)
    for d in range(D):
        for b in range(B):
            matched = pool.matcher(queries[d][b])
            for h in range(H):
                for s in range(2):
                    emb = pool.shared_embeddings[d, h, s][None, None]
                    for g, (t, j) in enumerate(gens):
                        cos = F.cosine_similarity(matched, keys[g], dim=0)
                        conv = F.conv2d(emb, weights[t][d, h, s, j][None, None], biases[t][d, h, s, j][None])[0, 0]
                        generated[d, b, h, s] += (cos * conv).to(dtype)
    used = generated.clone()
    used[1:] += generated[:-1]
    return [(used[d, :, :, 0], used[d, :, :, 1]) for d in range(D)]
