"""Training settings read by ``main.py`` (detectron2's ``configs/common/train.py`` layout).

``max_iter`` and the checkpoint period come from a recipe (``configs/common/scheduler.py``).
"""

train = dict(
    output_dir="./output",
    init_checkpoint="",
    # False: tensors of init_checkpoint whose shapes differ from the model's are skipped with a
    # warning instead of an error (missing keys, e.g. routers from a ViTMatte file, always are).
    init_strict=True,
    max_iter="???",  # set by a recipe
    # The official MattingTrainer always runs the forward under fp16 autocast with loss scaling;
    # precision: fp16 (CUDA), bf16 or fp32 (CPU: fp32 or bf16).
    amp=dict(enabled=True, precision="fp16"),
    ddp=dict(  # options for DistributedDataParallel
        broadcast_buffers=True,
        find_unused_parameters=False,
        fp16_compression=True,
    ),
    checkpointer=dict(period="???", max_to_keep=100),  # options for PeriodicCheckpointer
    eval_period=5000,  # used only when dataloader.evaluator is set
    log_period=10,  # console, metrics.json and TensorBoard scalars (official: log_loss_period)
    log_image_period=2000,  # training crops and predictions in TensorBoard
    device="cuda",
    seed=0,  # process seed: seed + rank; augmentations: (seed, epoch, sample) (data/seeding.py)
)
