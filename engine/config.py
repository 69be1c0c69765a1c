"""Lazy configs: detectron2's ``LazyCall`` / ``LazyConfig`` / ``instantiate`` on OmegaConf + hydra.

A config file is plain Python that builds a tree of lazy nodes::

    from engine.config import LazyCall as L
    model = L(ViT)(embed_dim=384, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU)

A lazy node is an OmegaConf ``DictConfig`` whose ``_target_`` is the dotted import path of the
callable and whose other keys are its keyword arguments. Values that YAML cannot hold are stored as
lazy nodes too, so a saved config stays readable and loads back to the same objects:

* ``partial(f, *args, **kw)`` -> ``{_target_: f, _partial_: true, _args_: args, **kw}``;
* a class or function ``f`` -> ``{_target_: hydra.utils.get_object, path: f}``.

Config files import each other relatively (``from ..common.train import train``) whether or not
``configs/`` is a package: a relative import inside a config file executes the named file afresh, so
edits made during one :meth:`LazyConfig.load` never leak into another.

References: detectron2 ``detectron2/config/lazy.py`` and ``instantiate.py`` (interface only).
"""

import ast
import builtins
import functools
import inspect
import logging
import os
import pydoc
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf

from utils.file_io import atomic_write

__all__ = ["LazyCall", "LazyConfig", "instantiate"]

logger = logging.getLogger(__name__)

# Hydra's public resolver from a dotted path to the object it names; used for class/function values.
_GET_OBJECT_TARGET = "hydra.utils.get_object"
# Keys that hydra interprets on a node; a partial whose keywords use them cannot become a node.
_HYDRA_RESERVED_KEYS = frozenset({"_target_", "_args_", "_partial_", "_convert_", "_recursive_"})
_PYTHON_SUFFIXES = (".py",)
_YAML_SUFFIXES = (".yaml", ".yml")
# Module name given to executed config files (they are never registered in ``sys.modules``).
_CONFIG_MODULE_PREFIX = "_lazy_config"
# Lower-case YAML words accepted in overrides in addition to Python literals (``train.amp=false``).
_YAML_WORDS = {"true": True, "false": False, "null": None}
_YAML_SCALARS = (str, int, float, bool, type(None))
_MISSING = object()


def _locate(path: str) -> Any:
    """Return the object named by a dotted path, or None if it cannot be imported."""
    try:
        return pydoc.locate(path)
    except pydoc.ErrorDuringImport:
        return None


def _dotted_name(obj: Callable[..., Any]) -> str:
    """Shortest dotted import path that resolves back to ``obj``.

    ``torch.nn.modules.normalization.LayerNorm`` becomes ``torch.nn.LayerNorm`` (like detectron2).

    Raises:
        ValueError: ``obj`` cannot be imported by name (lambda, local class, ...).
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module is None or qualname is None or "<" in qualname:
        raise ValueError(f"{obj!r} is not importable by a dotted name (no module-level name)")
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        candidate = f"{'.'.join(parts[:depth])}.{qualname}"
        located = _locate(candidate)
        if located is obj or (located is not None and located == obj):
            return candidate
    raise ValueError(f"{obj!r} is not importable as {module}.{qualname}")


def _target_name(target: Any) -> Any:
    """Dotted path for a callable ``_target_`` (kept as it is when it has none)."""
    if not callable(target):
        return target
    try:
        return _dotted_name(target)
    except ValueError:
        return target


def _partial_node(value: functools.partial) -> dict[str, Any] | None:
    """Lazy node for ``partial(func, *args, **keywords)``, or None if it cannot be expressed."""
    if _HYDRA_RESERVED_KEYS & set(value.keywords):
        return None
    try:
        target = _dotted_name(value.func)
    except ValueError:
        return None
    node: dict[str, Any] = {"_target_": target, "_partial_": True}
    if value.args:
        node["_args_"] = _to_node(list(value.args))
    node.update(_to_node(value.keywords))
    return node


def _to_node(value: Any) -> Any:
    """Plain-container copy of ``value`` with partials, classes and functions as lazy nodes.

    Configs are copied without resolving ``${...}`` interpolations. Objects that have no lazy form
    (lambdas, tensors, ...) are kept as they are: they instantiate but cannot be saved.
    """
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, dict):
        node = {}
        for key, item in value.items():
            node[key] = _target_name(item) if key == "_target_" else _to_node(item)
        return node
    if isinstance(value, list | tuple):
        return [_to_node(item) for item in value]
    if isinstance(value, functools.partial):
        node = _partial_node(value)
        return value if node is None else node
    if inspect.isclass(value) or inspect.isroutine(value):
        try:
            return {"_target_": _GET_OBJECT_TARGET, "path": _dotted_name(value)}
        except ValueError:
            return value
    return value


def _new_config(container: dict[str, Any]) -> DictConfig:
    """DictConfig that, like detectron2's, also accepts arbitrary Python objects as values."""
    return OmegaConf.create(container, flags={"allow_objects": True})


class LazyCall:
    """Wrap a callable so that calling it records a config node instead of calling it.

    ``LazyCall(nn.Linear)(in_features=4, out_features=2)`` returns the DictConfig
    ``{_target_: torch.nn.Linear, in_features: 4, out_features: 2}``; :func:`instantiate` builds it.

    Args:
        target: the callable (class or function) to call later, or its dotted import path.
    """

    def __init__(self, target: Callable[..., Any] | str) -> None:
        if not (callable(target) or isinstance(target, str)):
            raise TypeError(f"LazyCall target must be a callable or a dotted path, got {target!r}")
        self._target = target if isinstance(target, str) else _dotted_name(target)

    def __call__(self, **kwargs: Any) -> DictConfig:
        """Return the lazy node ``{_target_: target, **kwargs}``."""
        return _new_config({"_target_": self._target, **_to_node(kwargs)})


def instantiate(cfg: Any) -> Any:
    """Recursively build every lazy node in ``cfg``, innermost first.

    Args:
        cfg: a DictConfig/ListConfig, or a plain dict/list, possibly containing lazy nodes. Anything
            else is returned unchanged.

    Returns:
        The built object; dicts and lists that are not lazy nodes come back as plain Python
        containers (never DictConfig/ListConfig), both at top level and as arguments.
    """
    if OmegaConf.is_config(cfg) or isinstance(cfg, dict | list):
        return hydra.utils.instantiate(cfg, _convert_="all")
    return cfg


def _exec_config_file(path: Path) -> types.ModuleType:
    """Execute a Python config file in a fresh module whose relative imports load sibling files."""
    module = types.ModuleType(f"{_CONFIG_MODULE_PREFIX}.{path.stem}")
    module.__file__ = str(path)
    # Module-local builtins: the import hook only affects code in config files, nothing global.
    module.__builtins__ = {**vars(builtins), "__import__": _config_import_hook(path)}
    code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    exec(code, module.__dict__)
    return module


def _as_config(value: Any) -> Any:
    """Turn an imported plain dict into a DictConfig, so that ``train.max_iter = 10`` works."""
    return _new_config(_to_node(value)) if isinstance(value, dict) else value


def _config_import_hook(config_path: Path) -> Callable[..., Any]:
    """``__import__`` replacement for one config file; absolute imports go to the real one."""

    def config_import(
        name: str,
        module_globals: dict[str, Any] | None = None,
        module_locals: dict[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level == 0:
            return builtins.__import__(name, module_globals, module_locals, fromlist, level)
        base = config_path.parent
        for _ in range(level - 1):
            base = base.parent
        target = base.joinpath(*name.split(".")) if name else base
        statement = f"from {'.' * level}{name} import ..."
        if name and target.with_suffix(".py").is_file():
            module = _exec_config_file(target.with_suffix(".py"))
            for attr in fromlist or ():
                if hasattr(module, attr):
                    setattr(module, attr, _as_config(getattr(module, attr)))
            return module
        if target.is_dir():
            # ``from . import model`` / ``from .common import train``: each name is a file in it.
            package = types.ModuleType(f"{_CONFIG_MODULE_PREFIX}.{target.name}")
            package.__file__ = str(target)
            for attr in fromlist or ():
                child = target / f"{attr}.py"
                if not child.is_file():
                    raise ImportError(f"{config_path}: `{statement}` found no config file {child}")
                setattr(package, attr, _exec_config_file(child))
            return package
        raise ImportError(
            f"{config_path}: `{statement}` found no config file {target.with_suffix('.py')}"
        )

    return config_import


def _unserializable_keys(value: Any, key: str = "") -> list[str]:
    """Dotted keys of the leaves in a plain container that YAML cannot hold."""
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _unserializable_keys(v, f"{key}.{k}")]
    if isinstance(value, list):
        return [bad for i, v in enumerate(value) for bad in _unserializable_keys(v, f"{key}.{i}")]
    if isinstance(value, _YAML_SCALARS):
        return []
    return [f"{key.lstrip('.')} ({type(value).__name__})"]


def _parse_override_value(text: str) -> Any:
    """Python literal if ``text`` is one (also ``true``/``false``/``null``), else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _YAML_WORDS.get(text.strip().lower(), text)


class LazyConfig:
    """Load, override and save lazy configs (Python files or the YAML they are saved as)."""

    @staticmethod
    def load(path: str | os.PathLike, keys: str | Sequence[str] | None = None) -> Any:
        """Load a config file.

        Args:
            path: a ``.py`` config file (its relative imports resolve against its directory) or a
                ``.yaml`` file written by :meth:`save`.
            keys: if given, return only ``cfg[keys]`` (a string) or a tuple of them (a sequence).

        Returns:
            A fresh DictConfig whose keys are the file's public module-level configs and dicts
            (modules, functions, constants and ``_private`` names are skipped).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is neither Python nor YAML.
            KeyError: a requested key is not in the file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}")
        if path.suffix in _YAML_SUFFIXES:
            loaded = OmegaConf.load(path)
            if not isinstance(loaded, DictConfig):
                raise ValueError(f"{path}: a config file must hold a mapping at top level")
            cfg = _new_config(OmegaConf.to_container(loaded, resolve=False))
        elif path.suffix in _PYTHON_SUFFIXES:
            namespace = vars(_exec_config_file(path))
            cfg = _new_config(
                _to_node(
                    {
                        name: value
                        for name, value in namespace.items()
                        if not name.startswith("_")
                        and isinstance(value, DictConfig | ListConfig | dict)
                    }
                )
            )
        else:
            raise ValueError(
                f"{path}: unsupported config type {path.suffix!r} "
                f"(expected one of {_PYTHON_SUFFIXES + _YAML_SUFFIXES})"
            )
        if keys is None:
            return cfg
        wanted = [keys] if isinstance(keys, str) else list(keys)
        missing = [key for key in wanted if key not in cfg]
        if missing:
            raise KeyError(f"{path} has no top-level {missing}; it has {list(cfg)}")
        return cfg[keys] if isinstance(keys, str) else tuple(cfg[key] for key in wanted)

    @staticmethod
    def load_rel(filename: str, keys: str | Sequence[str] | None = None) -> Any:
        """:meth:`load` a file named relative to the calling file (for config files that derive
        from a sibling whose name is no valid module name, e.g. ``MEMatte_S_topk0.25_...py``).
        """
        caller = inspect.stack()[1].filename
        return LazyConfig.load(Path(caller).parent / filename, keys)

    @staticmethod
    def save(cfg: DictConfig, path: str | os.PathLike) -> None:
        """Write ``cfg`` as readable YAML that :meth:`load` turns back into the same objects.

        The file is written atomically (:func:`utils.file_io.atomic_write`).

        Raises:
            ValueError: ``cfg`` holds objects with no YAML form (lambdas, tensors, ...).
        """
        path = Path(path)
        container = _to_node(cfg)
        bad = _unserializable_keys(container)
        if bad:
            raise ValueError(f"Cannot save config to {path}: no YAML form for {', '.join(bad)}")
        text = OmegaConf.to_yaml(OmegaConf.create(container))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file: file.write(text.encode("utf-8")))
        logger.info("Saved config to %s", path)

    @staticmethod
    def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """Apply command-line overrides such as ``train.max_iter=10`` in place.

        Values are Python literals (``10``, ``1e-4``, ``[0, 1]``, ``True``, ``'a b'``; also
        ``true``/``false``/``null``); anything else stays a string (``train.output_dir=out/x``).
        Dicts merge into existing nodes. A new key may be added under an existing node (a warning is
        logged), but every parent of the key must already exist.

        Returns:
            ``cfg``, modified.

        Raises:
            ValueError: an override is not ``key=value``.
            KeyError: a parent of the key is missing or is not a config node.
        """
        for override in overrides:
            key, sep, text = override.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"Override {override!r} is not of the form key=value")
            parts = key.split(".")
            for depth in range(1, len(parts)):
                parent = ".".join(parts[:depth])
                node = OmegaConf.select(cfg, parent, default=_MISSING)
                if node is _MISSING:
                    raise KeyError(f"Cannot override {key!r}: {parent!r} is not in the config")
                if not OmegaConf.is_config(node):
                    raise KeyError(
                        f"Cannot override {key!r}: {parent!r} is a {type(node).__name__}, "
                        "not a config node"
                    )
            if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
                logger.warning("Override %r adds key %r, which is not in the config", override, key)
            OmegaConf.update(cfg, key, _parse_override_value(text), merge=True)
        return cfg
