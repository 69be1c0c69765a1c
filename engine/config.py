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
import difflib
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
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from utils.file_io import atomic_write

__all__ = ["KEY_ALIASES", "ConfigOverrideError", "LazyCall", "LazyConfig", "instantiate"]

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
# OmegaConf's mark of a value that must be set (by a recipe or an override).
_UNSET = "???"
# Close matches offered when an override names no key.
_SUGGESTIONS = 3
# Official config keys that name one of ours (the official train.py logs every log_loss_period).
KEY_ALIASES = {"train.log_loss_period": "train.log_period"}


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

    Raises:
        Exception: what a target raised (e.g. ``FileNotFoundError`` for a missing data folder),
            unwrapped from hydra's ``InstantiationException``, with hydra's note of the config
            key it was building.
    """
    if not (OmegaConf.is_config(cfg) or isinstance(cfg, dict | list)):
        return cfg
    try:
        return hydra.utils.instantiate(cfg, _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__
        if cause is None:
            raise
        cause.add_note(f"(hydra) {str(error).splitlines()[0]} {_full_key(error)}".rstrip())
        raise cause from None


def _full_key(error: InstantiationException) -> str:
    """The ``full_key: ...`` line of hydra's message (the config key being built), or ``""``."""
    return next((line for line in str(error).splitlines() if line.startswith("full_key")), "")


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
    """Python literal if ``text`` is one (also ``true``/``false``/``null``; a tuple becomes a
    list, as configs hold them), else the raw string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _YAML_WORDS.get(text.strip().lower(), text)
    return list(value) if isinstance(value, tuple) else value


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
        """Apply command-line overrides such as ``train.max_iter=10`` in place, checked first.

        Values are Python literals (``10``, ``1e-4``, ``[0, 1]``, ``True``, ``'a b'``; also
        ``true``/``false``/``null``); anything else stays a string (``train.output_dir=out/x``).
        Each override is checked before it is applied (see :func:`_checked_value`):

        * the key must exist, or be an argument that the callable of its lazy node accepts
          (``model.backbone.use_act_checkpoint=True``); otherwise the error suggests close keys;
        * the value must fit the current one: an int for an int, a number for a float, a bool for
          a bool, a list for a list, a dict for a node (merged into it; one with another
          ``_target_`` replaces it), any text for a string. ``None``, ``${...}`` interpolations
          and values replacing ``None`` or ``???`` are always accepted.

        ``KEY_ALIASES`` maps official key names to ours (``train.log_loss_period``).

        Returns:
            ``cfg``, modified.

        Raises:
            ConfigOverrideError: an override is not ``key=value``, names no key of the config, or
                gives a value of the wrong type.
        """
        for override in overrides:
            key, sep, text = override.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigOverrideError(f"Override {override!r} is not of the form key=value")
            if key in KEY_ALIASES:
                logger.info("%s is the official name of %s", key, KEY_ALIASES[key])
                key = KEY_ALIASES[key]
            parent, name = _parent_node(cfg, key, override)
            value = _parse_override_value(text)
            siblings = _raw_children(parent)
            if name in siblings:
                value = _checked_value(override, key, siblings[name], value, text)
                replace = _replaces_node(siblings[name], value)
            else:
                _check_new_key(override, key, parent, list(siblings))
                replace = False
            OmegaConf.update(cfg, key, value, merge=not replace)
        return cfg


class ConfigOverrideError(ValueError):
    """A command-line override that is malformed, names no config key, or has a wrong type."""


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean x or y?)`` with the candidates closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=_SUGGESTIONS)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _raw_children(node: Any) -> dict[str, Any]:
    """The children of a config node as written: interpolations and ``???`` unresolved, nested
    nodes as plain containers; list indexes as strings."""
    container = OmegaConf.to_container(node, resolve=False)
    if isinstance(container, list):
        return {str(index): value for index, value in enumerate(container)}
    return container


def _parent_node(cfg: DictConfig, key: str, override: str) -> tuple[Any, str]:
    """The config node holding ``key``'s last part, and that part.

    Raises:
        ConfigOverrideError: a parent is not in the config (with suggestions) or is not a node.
    """
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts[:-1]):
        children = _raw_children(node)
        path = ".".join(parts[: depth + 1])
        if part not in children:
            raise ConfigOverrideError(
                f"Override {override!r}: {path} is not in the config"
                + _did_you_mean(part, list(children))
            )
        if not isinstance(children[part], dict | list):
            raise ConfigOverrideError(
                f"Override {override!r}: {path} is a {type(children[part]).__name__}, "
                "not a config node"
            )
        node = node[int(part)] if isinstance(node, ListConfig) else node[part]
    return node, parts[-1]


def _accepted_arguments(target: Any) -> set[str] | None:
    """Keyword arguments a lazy node's ``_target_`` accepts; None when any is (``**kwargs``) or
    when the target cannot be inspected."""
    target = _locate(target) if isinstance(target, str) else target
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _check_new_key(override: str, key: str, parent: Any, siblings: list[str]) -> None:
    """Accept a key that is not in the config only as an argument of its lazy node's target.

    Raises:
        ConfigOverrideError: the parent is no lazy node, or its target takes no such argument.
    """
    name = key.rsplit(".", 1)[-1]
    target = parent.get("_target_") if isinstance(parent, DictConfig) else None
    accepted = _accepted_arguments(target) if target is not None else set()
    if accepted is None or name in accepted:
        return
    problem = f"{target} takes no argument {name!r}" if target else f"{key} is not in the config"
    candidates = sorted({*siblings, *accepted} - {"_target_"})
    raise ConfigOverrideError(f"Override {override!r}: {problem}" + _did_you_mean(name, candidates))


def _type_name(value: Any) -> str:
    """``a config node``, ``a list``, ``an int``, ``a float``, ... for error messages."""
    if isinstance(value, dict):
        name = "config node"
    else:
        name = "list" if isinstance(value, list) else type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _checked_value(override: str, key: str, current: Any, value: Any, text: str) -> Any:
    """``value`` for ``key`` once checked against its ``current`` (raw) value; ints become
    floats where a float is expected, and a literal given for a string stays the text typed.

    Raises:
        ConfigOverrideError: ``value`` cannot take the place of ``current``.
    """
    free = current is None or (isinstance(current, str) and _is_unset_or_interpolation(current))
    if free or value is None or (isinstance(value, str) and _is_unset_or_interpolation(value)):
        return value
    if isinstance(current, str):
        return value if isinstance(value, str) else text.strip()
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, list):
        ok = isinstance(value, list)
    elif isinstance(current, dict):
        ok = isinstance(value, dict)
    else:  # an object stored in the config: nothing to compare with
        ok = True
    if not ok:
        raise ConfigOverrideError(
            f"Override {override!r}: {key} takes {_type_name(current)} (now {current!r}), "
            f"not the {type(value).__name__} {value!r}"
        )
    return value


def _is_unset_or_interpolation(text: str) -> bool:
    """``???`` (a value a recipe must set) or a string holding a ``${...}`` interpolation."""
    return text == _UNSET or "${" in text


def _replaces_node(current: Any, value: Any) -> bool:
    """A dict with another ``_target_`` than the current node's replaces the node (merging the
    old target's arguments into a new target would be wrong); other dicts merge into it."""
    if not (isinstance(current, dict) and isinstance(value, dict) and "_target_" in value):
        return False
    return _target_name(value["_target_"]) != current.get("_target_")
