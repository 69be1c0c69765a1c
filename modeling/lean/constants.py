"""Tuning constants of the lean inference path, in one place.

None of them changes a result: they only set how large the pieces are that the lean path computes
at a time (and so its peak memory and its speed). Sizes are per image of the batch.
"""

# Tokens per chunk of the MLP: its 4C-wide hidden state is 1024 x 1536 floats (6 MiB) for ViT-S;
# small, equal-sized chunk buffers are reused by the allocator instead of fragmenting it.
MLP_CHUNK_TOKENS = 1024
# Tokens (window padding included) per strip of window rows in window attention.
WINDOW_CHUNK_TOKENS = 2**12
# Tokens per row strip of the spatially local ops (LTRM, the conv residual block): the LTRM's
# hidden activations of one strip are 2**12 x 2C floats (12 MiB for ViT-S).
STRIP_TOKENS = 2**12
# Tokens per chunk of the router (two passes: projections and their image mean, then the MLP).
ROUTER_CHUNK_TOKENS = 1024
# Patch rows per strip of the patch embedding (256 px rows at patch 16).
EMBED_STRIP_PATCH_ROWS = 16
# Largest additive rel-pos bias built at once: 2**25 floats = 128 MiB in fp32. Larger attention
# problems are split over (batch, query rows).
MAX_BIAS_ELEMENTS = 2**25
# The decoder's last fusion stages and its head (the largest maps of a decoder tile: up to 176
# channels at 1/2 and 68 at full resolution) run in strips of this many output rows.
DECODER_STRIP_STAGES = 2
DECODER_STRIP_ROWS = 128
