"""Training settings read by ``main.py`` (detectron2's ``configs/common/train.py`` layout).

Holds the MEMatte-S recipe (2 GPUs x 16 crops, 30 DIM epochs); other variants override fields.
"""

# One DIM epoch: 431 foregrounds x 100 backgrounds = 43100 composites, over a global batch of
# 16 crops per GPU x 2 GPUs. Kept a float, as the official int(43100 / 16 / 2 * epochs).
DIM_TRAIN_SAMPLES = 43100
ITERS_PER_EPOCH = DIM_TRAIN_SAMPLES / (16 * 2)
EPOCHS = 30
CHECKPOINT_EPOCHS = 2

train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=int(ITERS_PER_EPOCH * EPOCHS),  # 40406
    # The official MattingTrainer always runs the forward under fp16 autocast with loss scaling;
    # precision: fp16 (CUDA), bf16 or fp32 (CPU: fp32 or bf16).
    amp=dict(enabled=True, precision="fp16"),
    ddp=dict(  # options for DistributedDataParallel
        broadcast_buffers=True,
        find_unused_parameters=False,
        fp16_compression=True,
    ),
    # options for PeriodicCheckpointer: save every 2 epochs
    checkpointer=dict(period=int(ITERS_PER_EPOCH * CHECKPOINT_EPOCHS), max_to_keep=100),  # 2693
    eval_period=5000,  # used only when dataloader.evaluator is set
    log_period=10,  # console, metrics.json and TensorBoard scalars
    log_image_period=2000,  # training crops and predictions in TensorBoard
    device="cuda",
    seed=0,  # process seed is seed + rank; data streams derive from it (data/build.py)
)
