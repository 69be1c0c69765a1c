"""Alpha mattes from an exported ONNX deployment (``tools/export_onnx.py``) with onnxruntime,
without PyTorch.

``OnnxMattingPredictor`` has ``predictor.matting.MattingPredictor``'s call signature::

    predictor = OnnxMattingPredictor("MEMatte_S_onnx")  # CPU; CUDA when onnxruntime has it
    alpha = predictor("image.jpg", "trimap.png")  # float32 [H, W] in [0, 1]

The alpha has the trimap's known regions forced to 0 and 1 as the official script does, so
``floor(alpha * 255)`` is the PNG that ``inference.py`` writes (``inference.py --onnx`` runs it).
Inputs are read and converted as ``MattingPredictor`` reads them (one code path,
:mod:`predictor.inputs`). This module imports numpy, onnxruntime and the project's pure-Python
modules only: ``pip install onnxruntime opencv-python-headless numpy pillow`` and the exported
folder make a complete deployment.

The run of one image mirrors the PyTorch lean path (layout in ``docs/deployment.md``): the
normalised input in row strips through ``embed.onnx``, the tokens through ``blocks.onnx``, then
the official 512 px decoder tiles; a tile without unknown pixels is skipped, and in the others
the decoder stage graphs run on the boxes of the block-sparse plan, the same plan as the PyTorch
decoder's (:func:`modeling.lean.blocks.plan_decoder`, walked by
:func:`modeling.lean.block_decode.decode_plan`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from modeling.lean.block_decode import decode_plan
from modeling.lean.blocks import DecoderSpec, map_sizes, plan_decoder
from modeling.patches import padded_size, patch_tiles
from predictor.prediction import BatchPrediction, ImagePredictor
from utils.levels import UINT8_MAX, unit_float_array

if TYPE_CHECKING:
    from predictor.segmenter import Segmenter

__all__ = [
    "BLOCKS_FILE",
    "EMBED_FILE",
    "FORMAT",
    "KEEP_OUTPUT",
    "MANIFEST_FILE",
    "MAX_NUMBER_TOKEN_INPUT",
    "NO_CAP",
    "SCORES_OUTPUT",
    "SHRINK_ARENA_FROM_BYTES",
    "STAGE_FILE",
    "OnnxMattingPredictor",
    "check_deployment",
    "normalized_crop",
    "onnx_providers",
    "read_manifest",
]

logger = logging.getLogger(__name__)

# The deployment folder (written by predictor/onnx_graph.py): its manifest and graph files.
FORMAT = "mematte-onnx/2"
MANIFEST_FILE = "mematte.json"
EMBED_FILE, BLOCKS_FILE, STAGE_FILE = "embed.onnx", "blocks.onnx", "decoder_{}.onnx"
# Graph interface names: the blocks graph's cap input and its routing outputs, formatted with
# the routed block's index.
MAX_NUMBER_TOKEN_INPUT = "max_number_token"
KEEP_OUTPUT, SCORES_OUTPUT = "keep_block{}", "router_scores_block{}"
# A cap at least the token count of any image: global attention for every routed token.
NO_CAP = np.iinfo(np.int64).max
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"
GLOBAL_ROUTE = 0  # index of "route to global attention" in the router scores
# The inputs each graph of a deployment has (what the runtime feeds), by its role in the
# manifest: the embedding, the blocks, and the decoder stages (convstream{k}, fusion{i}, head).
GRAPH_INPUTS = {
    "embed": {"input"},
    "blocks": {"tokens"},
    "convstream": {"x", "pads"},
    "fusion": {"detail", "coarse", "starts", "pads"},
    "head": {"x", "pads"},
}
# The trimap value the clamp forces to 0; the one it forces to 1 is the full scale (255 for
# uint8 levels, 1 for floats).
_BACKGROUND = 0


def onnx_providers(device: str) -> list[str | tuple[str, dict[str, int]]]:
    """onnxruntime providers for ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (GPU N).

    Raises:
        ValueError: another device, or CUDA where onnxruntime has no CUDA provider.
    """
    available = ort.get_available_providers()
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return [CPU_PROVIDER]
    if kind not in ("auto", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if kind == "cuda" and CUDA_PROVIDER not in available:
        raise ValueError(f"device {device!r} requested but onnxruntime offers only {available}")
    if CUDA_PROVIDER not in available:
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": int(index or 0)}), CPU_PROVIDER]


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a deployment folder, checked: a manifest of this format naming graph
    files that exist (a graph file itself is checked when onnxruntime loads it).

    Raises:
        FileNotFoundError: no such folder, no manifest, or a graph file missing.
        ValueError: a manifest that does not parse or is not of this format.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if folder.is_file():
        raise ValueError(
            f"{folder}: a file, not an ONNX deployment: tools/export_onnx.py writes a folder "
            f"({MANIFEST_FILE} and its graphs); export the model again into a folder"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no ONNX deployment (no {MANIFEST_FILE}; export one with "
            "tools/export_onnx.py)"
        )
    try:
        manifest = json.loads(path.read_text())
        graphs = [manifest["embed"], manifest["blocks"], *manifest["decoder"].values()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable {FORMAT} manifest ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r} (export the model "
            "again with this version's tools/export_onnx.py)"
        )
    for name in graphs:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing (an incomplete export?)")
    return manifest


def check_deployment(folder: str | Path) -> dict:
    """Check, without building a session, that ``folder`` is a deployment written by
    ``tools/export_onnx.py``: its manifest (:func:`read_manifest`), and each graph file
    non-empty and, where the ``onnx`` package is installed (a minimal deployment may go without
    it: onnxruntime then refuses a bad graph when the predictor loads it), an ONNX model with
    the inputs its role needs (:data:`GRAPH_INPUTS`; external data left unread).

    Returns:
        the manifest.

    Raises:
        FileNotFoundError: no such folder, no manifest, a graph file missing.
        ValueError: a file instead of a folder, a manifest that does not parse or is of another
            format, an empty graph file, or one that is not an ONNX model with those inputs;
            each names the file.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:  # a protobuf parser, not a runtime: parsing runs nothing
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        onnx = None
    graphs = {"embed": manifest["embed"], "blocks": manifest["blocks"], **manifest["decoder"]}
    for role, name in graphs.items():
        path = folder / name
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file, not an ONNX graph")
        if onnx is None:
            continue
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not an ONNX model ({exc})") from exc
        inputs = {value.name for value in model.graph.input}
        needed = GRAPH_INPUTS[role.rstrip("0123456789")]
        if not needed <= inputs or not model.graph.output:
            raise ValueError(
                f"{path}: not the {role} graph of an export by tools/export_onnx.py (needs the "
                f"inputs {sorted(needed)} and an output; has inputs {sorted(inputs) or 'none'})"
            )
    return manifest


def normalized_crop(
    image: np.ndarray,
    trimap: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> np.ndarray:
    """``[1, 4, h, w]`` float32 network input over ``rows`` x ``cols`` of the padded input:
    normalised RGB and the trimap (levels / full scale), zeros beyond the image (the padding, as
    :class:`modeling.lean.input.NormalizedInput` crops it).

    Args:
        image: ``[3, H, W]`` uint8 or uint16 levels, or float in [0, 1].
        trimap: ``[H, W]`` uint8 levels.
        mean, std: ``[3, 1, 1]`` float32 normalisation.
        rows, cols: half-open spans, possibly beyond ``(H, W)``.
    """
    (y0, y1), (x0, x1) = rows, cols
    H, W = trimap.shape
    out = np.zeros((1, 4, y1 - y0, x1 - x0), np.float32)
    h, w = min(y1, H) - y0, min(x1, W) - x0
    if h > 0 and w > 0:
        rgb = unit_float_array(image[:, y0 : y0 + h, x0 : x0 + w])
        out[0, :3, :h, :w] = (rgb - mean) / std
        out[0, 3, :h, :w] = unit_float_array(trimap[y0 : y0 + h, x0 : x0 + w])
    return out


def _tile_features(
    features: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """``features[:, rows, cols]`` of ``[1, h, w, C]`` (channels last, as the blocks graph
    leaves them) as a contiguous ``[1, C, rows, cols]`` (the decoder's layout), zeros beyond the
    map."""
    (y0, y1), (x0, x1) = rows, cols
    out = np.zeros((1, features.shape[-1], y1 - y0, x1 - x0), features.dtype)
    crop = features[0, y0:y1, x0:x1]  # [rows', cols', C], clipped to the map
    out[0, :, : crop.shape[0], : crop.shape[1]] = crop.transpose(2, 0, 1)
    return out


def _onnx_pads(pads: tuple[int, int, int, int]) -> np.ndarray:
    """(left, right, top, bottom) as the ``pads`` input of ONNX ``Pad`` on ``[N, C, H, W]``."""
    left, right, top, bottom = pads
    return np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)


# onnxruntime session option: whether the intra-op threads spin while waiting for work.
_ALLOW_SPINNING = "session.intra_op.allow_spinning"
# onnxruntime run option: the devices whose arena returns its free memory after the run.
_ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
# Token maps from this size up (a 4096 x 4096 image's is 96 MiB for ViT-S, a 2048 x 2048 one's
# 24 MiB) have the blocks arena give its memory back after the run, before the decoder runs.
SHRINK_ARENA_FROM_BYTES = 64 * 2**20


class _OrtStages:
    """The per-box decoder computations
    (:class:`~modeling.lean.block_decode.DecoderStages`) as runs of the stage graphs."""

    def __init__(self, sessions: dict[str, ort.InferenceSession]) -> None:
        self.sessions = sessions

    def _run(self, stage: str, **feeds: np.ndarray) -> np.ndarray:
        inputs = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        return self.sessions[stage].run(None, inputs)[0]

    def stride_down(self, k: int, x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
        return self._run(f"convstream{k}", x=x, pads=_onnx_pads(pads))

    def fuse(
        self,
        i: int,
        detail: np.ndarray,
        coarse: np.ndarray,
        offset: tuple[int, int],
        pads: tuple[int, int, int, int],
    ) -> np.ndarray:
        starts = np.array(offset, np.int64)
        return self._run(
            f"fusion{i}", detail=detail, coarse=coarse, starts=starts, pads=_onnx_pads(pads)
        )

    def head(self, x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
        return self._run("head", x=x, pads=_onnx_pads(pads))

    @staticmethod
    def empty(like: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
        return np.empty(shape, like.dtype)

    @staticmethod
    def label(name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class OnnxMattingPredictor(ImagePredictor):
    """An exported MEMatte (or ViTMatte) behind ``MattingPredictor``'s call signature.

    Args:
        model_path: the folder written by ``tools/export_onnx.py`` (graphs are code for
            onnxruntime's operators only: loading them runs nothing else).
        device: ``auto`` (CUDA when onnxruntime has its CUDA provider, else CPU), ``cpu``,
            ``cuda`` or ``cuda:N``.
        max_number_token: cap on tokens in one global attention; None takes the exported
            config's cap (18500 for the official configs; no cap if the config has none).
        threads: onnxruntime intra-op threads (None: its default, one per core).
        segmenter: for ``box=`` / ``points=`` calls, as ``MattingPredictor``'s (a PyTorch model,
            run on the predictor's device: PyTorch and transformers are imported only then).

    Raises:
        FileNotFoundError, ValueError: not a deployment folder (:func:`read_manifest`).
        ValueError: an unusable device or cap, a graph onnxruntime cannot load, or a segmenter
            that cannot be loaded.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        max_number_token: int | None = None,
        threads: int | None = None,
        segmenter: Segmenter | str | Path | None = None,
    ) -> None:
        folder = Path(model_path)
        manifest = read_manifest(folder)
        if isinstance(max_number_token, bool) or not (
            max_number_token is None or isinstance(max_number_token, int)
        ):
            raise ValueError(
                f"max_number_token must be an integer or None, got {max_number_token!r} (the "
                "'auto' rule of predictor/token_budget.py models the PyTorch forward's memory)"
            )
        providers = onnx_providers(device)

        def session(name: str, whole_map: bool) -> ort.InferenceSession:
            """The session of one graph: ``whole_map`` for the blocks graph, run once per
            image on the whole token map; else a graph run per strip or per box."""
            options = ort.SessionOptions()
            # Memory patterns plan one block for all activations of an input shape, allocated
            # next to the arena's: they more than double the peak from the second call on and
            # do not pay off when sizes vary (every box has its own).
            options.enable_mem_pattern = False
            # Each session has an arena of its own that keeps the most it ever held: the
            # blocks graph reuses its arena, the small graphs called per strip or per box
            # return their memory instead (nine arenas at their peaks would add up).
            options.enable_cpu_mem_arena = whole_map
            # Each session also has a thread pool of its own, whose threads spin after a run.
            # The small graphs run in turn, many times per image, and their spinning pools
            # took the cores from the one at work (decoder 3.0 s instead of 1.3 s at 2048 x
            # 2048); the blocks graph, one run of many small ops, keeps its spinning.
            options.add_session_config_entry(_ALLOW_SPINNING, "1" if whole_map else "0")
            if threads is not None:
                options.intra_op_num_threads = threads
            try:
                return ort.InferenceSession(str(folder / name), options, providers=providers)
            except Exception as exc:  # onnxruntime's errors derive from Exception only
                raise ValueError(f"{folder / name}: onnxruntime cannot load it ({exc})") from exc

        self.embed = session(manifest["embed"], whole_map=False)
        self.blocks = session(manifest["blocks"], whole_map=True)
        stages = {
            stage: session(name, whole_map=False) for stage, name in manifest["decoder"].items()
        }
        self.stages = _OrtStages(stages)
        self.spec = DecoderSpec.from_dict(manifest["decoder_spec"])
        self.pixel_mean = np.array(manifest["pixel_mean"], np.float32).reshape(-1, 1, 1)
        self.pixel_std = np.array(manifest["pixel_std"], np.float32).reshape(-1, 1, 1)
        self.size_divisibility = manifest["size_divisibility"]
        self.patch_size = manifest["patch_size"]
        self.strip_rows = manifest["embed_strip_patch_rows"] * self.patch_size
        self.routed_blocks: list[int] = manifest["routed_blocks"]
        if max_number_token is None:
            max_number_token = manifest["max_number_token"]
        self.max_number_token = NO_CAP if max_number_token is None else max_number_token
        self.blocks_inputs = {value.name for value in self.blocks.get_inputs()}
        self.blocks_outputs = [value.name for value in self.blocks.get_outputs()]
        provider = self.blocks.get_providers()[0]
        # Where inference.py's foreground estimation runs: "cuda" or "cuda:N" with the CUDA
        # provider, else the CPU.
        self.device = (
            ("cuda" if device == "auto" else device) if provider == CUDA_PROVIDER else "cpu"
        )
        logger.info("%s on %s, cap %s", folder, provider, self.max_number_token)
        if segmenter is not None:  # PyTorch and transformers, imported for prompts only
            from predictor.segmenter import as_segmenter

            segmenter = as_segmenter(segmenter, self.device)
        self.segmenter = segmenter

    def predict_levels(self, image: np.ndarray, trimap: np.ndarray) -> BatchPrediction:
        """Alpha and routing of a batch of same-sized images, one image at a time
        (``MattingPredictor.predict_levels``'s interface, so that ``inference.py`` runs either).

        Args:
            image: ``[B, 3, H, W]`` RGB: uint8 or uint16 levels, or float in [0, 1].
            trimap: ``[B, 1, H, W]`` uint8 levels (fed as value / 255), or float in [0, 1].
        """
        image, trimap = np.asarray(image), np.asarray(trimap)
        alphas, keeps, probabilities = [], [], []
        for rgb, levels in zip(image, trimap, strict=True):
            features, routing = self._backbone(rgb, levels[0])
            alphas.append(self._decode(features, rgb, levels[0]))
            # per routed block: keep [1, h, w, 1] -> [h, w]; log-probabilities -> p(global)
            keeps.append([routing[KEEP_OUTPUT.format(i)][0, ..., 0] for i in self.routed_blocks])
            probabilities.append(
                [
                    np.exp(routing[SCORES_OUTPUT.format(i)][0, ..., GLOBAL_ROUTE])
                    for i in self.routed_blocks
                ]
            )
        return BatchPrediction(
            alpha=np.stack(alphas),
            keep=[np.stack(maps) for maps in zip(*keeps, strict=True)],
            probability=[np.stack(maps) for maps in zip(*probabilities, strict=True)],
            block_indexes=tuple(self.routed_blocks),
        )

    def _backbone(self, image: np.ndarray, trimap: np.ndarray) -> tuple[np.ndarray, dict]:
        """Features ``[1, h, w, C]`` (channels last) of one image, its routing outputs by name."""
        Hp, Wp = padded_size(trimap.shape, self.size_divisibility)
        p = self.patch_size
        tokens = None
        for r0 in range(0, Hp, self.strip_rows):
            r1 = min(Hp, r0 + self.strip_rows)
            crop = normalized_crop(
                image, trimap, self.pixel_mean, self.pixel_std, (r0, r1), (0, Wp)
            )
            strip = self.embed.run(None, {"input": crop})[0]  # [1, rows / p, Wp / p, C]
            if tokens is None:
                tokens = np.empty((1, Hp // p, Wp // p, strip.shape[-1]), np.float32)
            tokens[:, r0 // p : r1 // p] = strip
        feeds = {
            "tokens": tokens,
            MAX_NUMBER_TOKEN_INPUT: np.array(self.max_number_token, np.int64),
        }
        feeds = {name: value for name, value in feeds.items() if name in self.blocks_inputs}
        run_options = ort.RunOptions()
        if tokens.nbytes >= SHRINK_ARENA_FROM_BYTES:
            run_options.add_run_config_entry(_ARENA_SHRINKAGE, "cpu:0")
        outputs = self.blocks.run(None, feeds, run_options)
        outputs = dict(zip(self.blocks_outputs, outputs, strict=True))
        return outputs.pop("features"), outputs

    def _decode(self, features: np.ndarray, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """Alpha ``[H, W]`` of one image, known regions forced: the official patch decoder on
        the tiles that hold unknown pixels, block-sparse within them."""
        H, W = trimap.shape
        stride = self.patch_size
        foreground = UINT8_MAX if trimap.dtype == np.uint8 else 1.0
        alpha = np.zeros((H, W), np.float32)
        for tile in patch_tiles(padded_size((H, W), self.size_divisibility), (H, W)):
            (top, bottom), (left, right) = tile.out
            region = trimap[top:bottom, left:right]
            wanted = (region != _BACKGROUND) & (region != foreground)
            if not wanted.any():
                continue  # the clamp sets every pixel of the tile
            y0, y1, x0, x1 = tile.crop
            tile_features = _tile_features(
                features, (y0 // stride, y1 // stride), (x0 // stride, x1 // stride)
            )
            tile_input = normalized_crop(
                image, trimap, self.pixel_mean, self.pixel_std, (y0, y1), (x0, x1)
            )
            sizes = map_sizes((y1 - y0, x1 - x0), tile_features.shape[-2:], len(self.spec.fusions))
            at = (tile.region[0][0], tile.region[1][0])
            plan = plan_decoder(self.spec, sizes, wanted, at)
            for box, values in decode_plan(
                plan, self.spec, sizes, tile_features, tile_input, self.stages
            ):
                (b0, b1), (c0, c1) = box
                alpha[y0 + b0 : y0 + b1, x0 + c0 : x0 + c1] = values[0, 0]
        alpha[trimap == _BACKGROUND] = 0.0
        alpha[trimap == foreground] = 1.0
        return alpha
