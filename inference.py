"""Matting inference over a test-set folder: one 8-bit alpha PNG per image.

    python inference.py --config-file configs/MEMatte_S_topk0.25_win_global_long.py \
        --checkpoint MEMatte_ViTS_DIM.pth --data-dir datasets/Composition-1k \
        --output-dir output/predictions [--batch-size 2] [--save-routing] [key=value ...]

The official spellings (``--config-dir``, ``--checkpoint-dir``, ``--inference-dir``) work too.
Images are grouped by size into batches; each image's result equals its batch-1 result. Files
already in the output folder are skipped unless ``--overwrite``, so an interrupted run resumes.
A bad item (unreadable file, missing or mismatched trimap) is reported and skipped; the exit
status is 1 when any item failed.

The checkpoint is read with ``weights_only=True``; one that also pickles other objects is refused
unless ``--trust-checkpoint`` (unpickling runs code stored in the file).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.eval_dataset import MattingEvalDataset
from data.image_io import BadSampleError, write_image
from data.readers import FOLDER_LAYOUTS, MattingItem, scan_test_set
from engine.checkpoint import add_trust_checkpoint_argument
from engine.predictor import alpha_to_uint8, build_inference_model, load_inference_weights, predict
from modeling.backbone.router import GLOBAL_ROUTE
from utils.device import resolve_device
from utils.memory import peak_memory_bytes
from utils.token_budget import auto_max_number_token
from utils.visualizer import routing_figure

logger = logging.getLogger("inference")

ROUTING_DIR = "routing"
MIB = 1024**2
AUTO = "auto"


@dataclass
class Summary:
    """Counts, timings and routing statistics of one run."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    model_seconds: float = 0.0
    routed_ratio_sums: dict[int, float] = field(default_factory=lambda: defaultdict(float))

    def log(self, device: torch.device) -> None:
        logger.info(
            "done %d, skipped (already present) %d, failed %d",
            self.done,
            self.skipped,
            len(self.failed),
        )
        for path, reason in self.failed:
            logger.error("failed: %s: %s", path, reason)
        if self.done:
            logger.info("model time: %.3f s per image", self.model_seconds / self.done)
            ratios = ", ".join(
                f"block {i}: {100 * s / self.done:.1f}%"
                for i, s in sorted(self.routed_ratio_sums.items())
            )
            logger.info("mean share of tokens in global attention: %s", ratios)
        kind = "CUDA allocated" if device.type == "cuda" else "RSS"
        logger.info("peak memory: %.0f MiB (%s)", peak_memory_bytes(device) / MIB, kind)


class _SafeSamples(Dataset):
    """Loads test items; a bad item becomes ``{"error": ..., "path": ...}`` instead of raising."""

    def __init__(self, items: list[MattingItem]) -> None:
        self.items = items
        self.dataset = MattingEvalDataset(items=items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        try:
            sample = self.dataset[idx]
        except BadSampleError as exc:
            return {"error": exc.reason, "path": exc.path}
        sample["stem"] = self.items[idx].name
        return sample


def _run_batch(samples: list[dict], model, args, device, output_dir: Path, summary: Summary):
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "trimap")}
    if args.max_number_token == AUTO:
        model.backbone.max_number_token = auto_max_number_token(
            model, tuple(batch["image"].shape[-2:]), device
        )
    start = time.perf_counter()
    out = predict(
        model, batch, device=device, precision=args.precision, patch_decoder=args.patch_decoder
    )
    summary.model_seconds += time.perf_counter() - start
    blocks = model.backbone.routed_block_indexes
    for i, sample in enumerate(samples):
        alpha = alpha_to_uint8(out["phas"][i, 0], sample["trimap"][0], rounding=args.round)
        write_image(output_dir / f"{sample['stem']}.png", alpha)
        keeps = [k[i, ..., 0].float().cpu().numpy() for k in out["keep"]]
        for index, keep in zip(blocks, keeps):
            summary.routed_ratio_sums[index] += float(keep.mean())
        if args.save_routing:
            # router log-probabilities [B, h, w, 2] -> p(global) [h, w]
            probs = [
                s[i, ..., GLOBAL_ROUTE].float().exp().cpu().numpy() for s in out["router_scores"]
            ]
            image = sample["image"].permute(1, 2, 0).numpy()
            figure = routing_figure(image, keeps, blocks, probabilities=probs)
            write_image(output_dir / ROUTING_DIR / f"{sample['stem']}.jpg", figure)
        summary.done += 1


def run(args: argparse.Namespace) -> Summary:
    """Predict every pending item of ``args.data_dir`` into ``args.output_dir``."""
    device = resolve_device(args.device)
    test_set = scan_test_set(args.data_dir, args.layout)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.save_routing:
        (output_dir / ROUTING_DIR).mkdir(exist_ok=True)
    summary = Summary(failed=[(p, "no trimap") for p in test_set.missing_trimaps])
    pending = []
    for item in test_set.items:
        if not args.overwrite and (output_dir / f"{item.name}.png").exists():
            summary.skipped += 1
        else:
            pending.append(item)
    logger.info(
        "%s (%s layout): %d images, %d to predict",
        test_set.root,
        test_set.layout.name,
        len(test_set.items),
        len(pending),
    )
    if not pending:
        return summary

    model = build_inference_model(args.config_file, args.opts)
    load_inference_weights(model, args.checkpoint, trusted=args.trust_checkpoint)
    model.to(device).eval()
    if args.max_number_token not in (None, AUTO):
        model.backbone.max_number_token = int(args.max_number_token)

    loader = DataLoader(
        _SafeSamples(pending), batch_size=None, num_workers=args.workers, shuffle=False
    )
    buckets: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for sample in tqdm(loader, total=len(pending), desc="inference", unit="img"):
        if "error" in sample:
            logger.error("skipping %s: %s", sample["path"], sample["error"])
            summary.failed.append((sample["path"], sample["error"]))
            continue
        bucket = buckets[tuple(sample["image"].shape[-2:])]
        bucket.append(sample)
        if len(bucket) == args.batch_size:
            _run_batch(bucket, model, args, device, output_dir, summary)
            bucket.clear()
    for bucket in buckets.values():
        if bucket:
            _run_batch(bucket, model, args, device, output_dir, summary)
    summary.log(device)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", "--config-dir", dest="config_file", required=True)
    parser.add_argument("--checkpoint", "--checkpoint-dir", dest="checkpoint", required=True)
    add_trust_checkpoint_argument(parser)
    parser.add_argument("--data-dir", required=True, help="test-set folder")
    parser.add_argument("--output-dir", "--inference-dir", dest="output_dir", required=True)
    parser.add_argument(
        "--layout",
        choices=[layout.name for layout in FOLDER_LAYOUTS],
        help="test-set layout (default: detected from the folder)",
    )
    parser.add_argument(
        "--max-number-token",
        default=None,
        help="cap on tokens in one global attention per image: an integer, 'auto' (from the "
        "device's free memory) or unset (the config's value, 18500 as official)",
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument(
        "--no-patch-decoder",
        dest="patch_decoder",
        action="store_false",
        help="decode the whole image at once instead of 512 px tiles",
    )
    parser.add_argument(
        "--save-routing", action="store_true", help="also write routing/<name>.jpg pictures"
    )
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    parser.add_argument(
        "--round", action="store_true", help="round alpha to 8 bits (official: truncate)"
    )
    parser.add_argument("--workers", type=int, default=2, help="image-loading processes")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.max_number_token not in (None, AUTO):
        try:
            args.max_number_token = int(args.max_number_token)
        except ValueError:
            parser.error("--max-number-token takes an integer or 'auto'")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        summary = run(args)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
