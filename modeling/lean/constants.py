"""Tuning constants of the lean inference path, in one place.

None of them changes a result: they only set how large the pieces are that the lean path computes
at a time (and so its peak memory and its speed). Sizes are per image of the batch.
"""

# Tokens per chunk of the MLP: its 4C-wide hidden state is 1024 x 1536 floats (6 MiB) for ViT-S;
# small, equal-sized chunk buffers are reused by the allocator instead of fragmenting it.
MLP_CHUNK_TOKENS = 1024
# Queries per chunk of global attention: with the query projection and the attention output
# of one chunk at a time, the routed tokens' attention holds their keys and values (2C per token)
# instead of the whole q/k/v projection and its head-major copy (18500 routed tokens: 57 MiB
# instead of about 200 MiB for ViT-S).
QUERY_CHUNK_TOKENS = 2**12
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
# Block-sparse decoding (modeling/lean/blocks.py): the clamped decoder computes the output blocks
# of DECODER_BLOCK px that hold an unknown pixel, and of every map only what they depend on, in
# boxes of at most DECODER_BOX_ROWS rows (bounding the temporaries: a box of the last fusion
# stage holds 68 channels at full resolution for ViT-S). Two boxes are merged where their hull
# costs less than both, counting DECODER_BOX_OVERHEAD_MACS multiply-adds for the fixed cost of
# one box's kernel calls (crops, upsampling, concatenation, conv launch).
DECODER_BLOCK = 64
DECODER_BOX_ROWS = 128
DECODER_BOX_OVERHEAD_MACS = 5_000_000
