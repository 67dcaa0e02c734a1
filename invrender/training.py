"""Model-agnostic training: configs, a task registry, and a ``Trainer`` with exact resume and DDP.

Every model in ``invrender.models`` trains through this module (``invrender train <task>``). A model
plugs in as a *task*: a small object that knows how to build the model and its optimizers, which
data to read, and what one training step does. The trainer owns everything else: devices,
distributed data parallel (DDP), data order, progress bar, TensorBoard, sample images, and
checkpoints that resume bit-identically.

Task protocol
-------------
A task is any object with these methods (subclass :class:`Task` to get the optional ones as no-ops)::

    build(config, device) -> (model, optimizers)            # required
        model: nn.Module already on ``device``; optimizers: dict name -> torch.optim.Optimizer.
        May also return (model, optimizers, schedulers) with schedulers a dict name -> LR scheduler
        (``step()``, ``state_dict``, ``load_state_dict``): the trainer calls ``step()`` on each after
        every training step (schedules count steps, not epochs) and checkpoints them.
    dataset(config, split) -> torch.utils.data.Dataset      # required; split is "train" or "val"
    train_step(model, batch, optimizers, step) -> dict      # required
        One optimization step: forward, backward(s) and optimizer step(s) done by the task, so models
        with several optimizers (GANs) work. ``model`` is the DDP-wrapped module under DDP (call it,
        do not call ``model.module`` in the forward you differentiate, or gradients are not
        synchronized); use :func:`unwrap` for attributes. A model with several sub-networks
        (generator and discriminator) should dispatch in its ``forward`` (e.g. ``model(x,
        mode="discriminate")``) and set ``find_unused_parameters: true`` when a step's forward
        leaves some parameters unused. Returns scalar losses / metrics (floats or
        0-dim tensors) for logging. ``batch`` is already on the device. ``step`` counts from 0.
    default_config() -> dict                                 # optional; defaults below the YAML
    config_schema() -> dict                                  # optional; types of keys without a default
        Every key a config may hold is in :data:`TRAIN_DEFAULTS`, ``default_config()`` or
        ``config_schema()``: :func:`resolve_config` rejects any other (see :func:`config_schema`).
    collate_fn                                               # optional attribute for the DataLoader
    wrap_ddp = False                                         # optional attribute (default True)
        The trainer then does not wrap the model in ``DistributedDataParallel``: ``train_step``
        synchronizes the processes itself, with :func:`average_gradients` after computing each
        optimizer's gradients and :func:`broadcast_buffers` (for models whose optimizer steps
        interleave with forwards in ways DDP's hooks do not follow, e.g. per-example latents with
        their own optimizer).
    visualize(model, batch, out_dir, step) -> dict           # optional
        Called on rank 0 every ``vis_every`` steps with the unwrapped model in eval mode under
        ``torch.no_grad()`` and a fixed batch of the "val" split (falling back to "train"). May
        write files a person can look at (meshes, GIFs) into ``out_dir``; returns images name ->
        tensor ``(C, H, W)`` or ``(N, C, H, W)`` in [0, 1], which the trainer saves as PNG in
        ``out_dir`` and logs to TensorBoard (batches as one grid). The RNG states are restored
        afterwards, so visualizing never changes training.
    evaluate(model, config, out_dir) -> dict                 # optional; used by ``invrender eval``
        The unwrapped model in eval mode; returns JSON-serializable metrics.

Tasks are registered by name with :func:`register_task` (a factory: a class or any zero-argument
callable returning a task). :func:`get_task` looks the name up and, if it is unknown, imports
``invrender.models.<name>`` once so that model modules can register themselves on import.

Configuration
-------------
A config is a plain nested dict. :func:`resolve_config` merges, later winning:
:data:`TRAIN_DEFAULTS` < ``task.default_config()`` < the YAML file < ``key=value`` overrides
(dotted keys for nested dicts, values parsed as YAML: ``lr=1e-3 model.dims=[32,64] name=foo``).
The trainer's own keys are the top-level keys of :data:`TRAIN_DEFAULTS`; everything else belongs to
the task. A key that neither knows (a typo) or a value of the wrong type, in the file or the overrides,
raises :class:`~invrender.errors.ConfigError` naming the closest known key (:func:`config_schema`,
:func:`check_config`). The resolved config (with the task name) is saved as ``<run_dir>/config.yaml``.

Run directory
-------------
::

    config.yaml                 resolved config (``invrender eval`` reads it)
    checkpoints/step_XXXXXXXX.pt
    tb/                         TensorBoard event files (scalars, image grids)
    samples/step_XXXXXXXX/      PNGs returned by visualize, plus whatever it wrote (meshes)
    log.jsonl                   the logged scalars, one JSON object per log step

Exact resume
------------
A checkpoint holds the model state, every optimizer's and scheduler's state, the step, the data
position (epoch and batch within the epoch) and the RNG states of every rank (torch CPU, CUDA when
present, numpy, python ``random``). The data order is a pure function of ``(seed, epoch)``
(:class:`ResumableDistributedSampler`) and the DataLoader's worker seeds come from a generator
re-seeded at each epoch, so on the CPU a run stopped at step k and resumed continues bit-identically
to one that never stopped (including shuffling and dropout). One limit: randomness drawn *inside
DataLoader worker processes* (``num_workers > 0``) restarts from the epoch's worker seed, so a
mid-epoch resume reproduces it only with ``num_workers: 0`` (the default). Checkpoints are written
atomically: a temporary file in the same directory, fsync, then ``os.replace`` (with the mode a plain
``open`` would give: the umask's for a new file, the old file's otherwise).

Distributed
-----------
Launched by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment), the trainer initializes
the process group (gloo on CPU, nccl on CUDA, device ``cuda:LOCAL_RANK``), wraps the model in
``DistributedDataParallel`` (unless the task sets ``wrap_ddp = False`` and synchronizes itself with
:func:`average_gradients`), and gives each process ``batch_size / world_size`` samples (the config's
``batch_size`` is the global batch). Only rank 0 shows progress and writes logs, samples and
checkpoints; logged losses are averaged over ranks.
"""

import collections.abc
import contextlib
import copy
import datetime
import difflib
import glob
import importlib
import json
import math
import os
import random
import re
import stat
import tempfile
import time
import typing
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .errors import ConfigError, MissingInputError

__all__ = [
    "TRAIN_DEFAULTS",
    "Task",
    "Trainer",
    "ResumableDistributedSampler",
    "register_task",
    "get_task",
    "available_tasks",
    "ConfigError",
    "load_config",
    "config_schema",
    "check_config",
    "apply_overrides",
    "parse_override",
    "merge_config",
    "resolve_config",
    "save_config",
    "resolve_device",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "unwrap",
    "move_to_device",
    "evaluate_run",
    "average_gradients",
    "broadcast_buffers",
]

#: The trainer's config keys and their defaults (everything else in a config belongs to the task).
TRAIN_DEFAULTS: Dict[str, Any] = {
    "steps": 1000,            # total optimization steps (a resumed run continues up to this)
    "batch_size": 32,         # GLOBAL batch; each of the world_size processes gets batch_size / world_size
    "seed": 0,                # model init, data order, dropout; rank r's step randomness uses seed + r
    "num_workers": 0,         # DataLoader workers (0: exact mid-epoch resume, see module docs)
    "shuffle": True,          # reshuffle the training set every epoch
    "log_every": 10,          # steps between logged scalars (TensorBoard, log.jsonl, progress bar)
    "ckpt_every": 500,        # steps between checkpoints (and one at the end); 0: only at the end
    "keep_checkpoints": 3,    # newest checkpoints kept (0 or None: keep all)
    "vis_every": 500,         # steps between visualize() calls; 0: never
    "vis_batch_size": 8,      # samples in the fixed visualization batch
    "find_unused_parameters": False,  # passed to DistributedDataParallel
    "stop_on_nonfinite": True,  # raise FloatingPointError when a logged loss is NaN or infinite
}

#: Types of the trainer's keys where the default's type is too narrow, and of the keys the command line adds.
_TRAIN_TYPES: Dict[str, Any] = {
    "log_every": Optional[int], "ckpt_every": Optional[int], "vis_every": Optional[int],  # None: off, as 0
    "keep_checkpoints": Optional[int],  # None: keep all, as 0
    "task": str, "run_dir": Optional[str],
}

#: The trainer's counts and their least value (a negative count would silently train or log nothing).
_TRAIN_COUNTS: Dict[str, int] = {"steps": 1, "batch_size": 1, "vis_batch_size": 1, "num_workers": 0, "log_every": 0,
                                 "ckpt_every": 0, "vis_every": 0, "keep_checkpoints": 0}


# ------------------------------------------------------------------------------------------------
# task protocol and registry


class Task:
    """Optional base class of tasks: documents the protocol (see the module docstring) and supplies
    no-op defaults for the optional methods. Subclasses implement ``build``, ``dataset`` and
    ``train_step``."""

    collate_fn: Optional[Callable] = None

    def default_config(self) -> Dict[str, Any]:
        return {}

    def build(self, config: Dict[str, Any], device: torch.device):
        raise NotImplementedError

    def dataset(self, config: Dict[str, Any], split: str) -> Dataset:
        raise NotImplementedError

    def train_step(self, model: nn.Module, batch: Any, optimizers: Dict[str, torch.optim.Optimizer],
                   step: int) -> Dict[str, Any]:
        raise NotImplementedError


_TASKS: Dict[str, Callable[[], Any]] = {}


def register_task(name: str, factory: Callable[[], Any] = None):
    """Register a task factory under ``name`` (replacing any previous one).

    ``factory`` is a class or zero-argument callable returning a task object. Usable as a
    decorator: ``@register_task("ucar")`` above a ``Task`` subclass.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_task: argument 'name' must be a non-empty string, got {name!r}")
    if factory is None:
        def deco(f):
            register_task(name, f)
            return f
        return deco
    if not callable(factory):
        raise TypeError(f"register_task: argument 'factory' must be callable, got {type(factory).__name__}")
    _TASKS[name] = factory
    return factory


def available_tasks() -> List[str]:
    """Names of the registered tasks."""
    return sorted(_TASKS)


def get_task(name: str):
    """A new task object for ``name``; imports ``invrender.models.<name>`` if it is not registered yet."""
    if name not in _TASKS:
        try:
            importlib.import_module(f"invrender.models.{name}")
        except ModuleNotFoundError as e:
            if e.name not in (f"invrender.models.{name}", "invrender.models"):
                raise
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {available_tasks()}")
    return _TASKS[name]()


# ------------------------------------------------------------------------------------------------
# configuration


def load_config(path) -> Dict[str, Any]:
    """Read a YAML file into a dict (an empty file gives ``{}``).

    Raises :class:`~invrender.errors.MissingInputError` if there is no such file and
    :class:`~invrender.errors.ConfigError` if it is not YAML or holds no mapping."""
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(f"config file {path!r} not found")
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level, got {type(config).__name__}")
    return config


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _parse_value(text: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _FLOAT_RE.match(text.strip()):
        return float(value)  # YAML 1.1 reads an unquoted "1e-3" as a string; a float is meant
    return value


def parse_override(text: str) -> Tuple[List[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], parsed value)``; the value is parsed as YAML."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"config override must look like key=value (dotted keys for nested), got {text!r}")
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"config override {text!r}: empty key")
    return keys, _parse_value(value)


def apply_overrides(config: Dict[str, Any], overrides: Iterable[str],
                    schema: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A copy of ``config`` with ``key=value`` overrides applied (nested dicts created as needed).

    With a ``schema`` (:func:`config_schema`) the overrides are checked first (:func:`check_config`):
    an unknown key or a value of the wrong type raises :class:`~invrender.errors.ConfigError`."""
    overrides = list(overrides or ())
    if schema is not None:
        check_config(apply_overrides({}, overrides), schema, "in the overrides")
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        node = config
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                if k in node and node[k] is not None:
                    raise ConfigError(f"config override {text!r}: {k!r} is not a mapping ({node[k]!r})")
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return config


def merge_config(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive merge: a copy of ``base`` with ``update``'s values (dicts merged key by key)."""
    out = copy.deepcopy(base)
    for k, v in (update or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _types_of(example: Dict[str, Any]) -> Dict[str, Any]:
    """A schema from example values: each value's type (``None``: any; a list or tuple: a list)."""
    return {k: _types_of(v) if isinstance(v, dict) else Any if v is None else
            list if isinstance(v, (list, tuple)) else type(v) for k, v in example.items()}


def config_schema(task=None) -> Dict[str, Any]:
    """The keys a config of ``task`` may hold and the type of each value.

    A nested dict shaped like the config whose leaves are types: ``int``, ``float`` (ints accepted),
    ``str``, ``bool``, ``list``, ``typing.Any``, or typing forms of them (``Optional[int]``,
    ``List[str]``, ``Tuple[float, float]``, ``Union[...]``). It joins the trainer's keys
    (:data:`TRAIN_DEFAULTS`, ``task`` and ``run_dir``), the keys of ``task.default_config()`` typed by
    their default values (``None``: any value), and ``task.config_schema()`` if the task has one (keys
    without a default, or a type the default does not tell; its types win).
    """
    schema = merge_config(_types_of(TRAIN_DEFAULTS), _TRAIN_TYPES)
    if task is not None and hasattr(task, "default_config"):
        schema = merge_config(schema, _types_of(task.default_config() or {}))
    if task is not None and hasattr(task, "config_schema"):
        schema = merge_config(schema, task.config_schema())
    return schema


def _matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` (as read from YAML) has the type ``expected`` (a schema leaf)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if expected in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if expected in (int, float):  # YAML's true is not a number; an int is a float
        return not isinstance(value, bool) and isinstance(value, (int,) if expected is int else (int, float))
    if expected is type(None):
        return value is None
    return isinstance(value, expected)


_TYPE_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
               bool: ("true or false", "booleans"), type(None): ("null", "nulls"), dict: ("a mapping", "mappings")}


def _describe(expected: Any) -> str:
    """``Optional[int]`` -> ``"an integer or null"`` (for messages)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Union:
        return " or ".join(_describe(a) for a in args)
    if expected in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        if not args:
            return "a list"
        count = f"{len(args)} " if origin is tuple and args[-1] is not Ellipsis else ""
        return f"a list of {count}{_TYPE_NAMES.get(args[0], ('', 'values'))[1]}"
    return _TYPE_NAMES.get(expected, (getattr(expected, "__name__", str(expected)),))[0]


def _dotted_keys(schema: Dict[str, Any], prefix: str = "") -> List[str]:
    keys = []
    for k, v in schema.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _dotted_keys(v, prefix + k + ".")
    return keys


def _closest_key(path: List[str], siblings: Iterable[str], schema: Dict[str, Any]) -> Optional[str]:
    """The known key a user most likely meant by the unknown ``path``: the same name at another level (a
    model key given at the top: ``lr`` -> ``model.lr``), else a close spelling at the same level, else a
    close spelling anywhere."""
    anywhere: Dict[str, str] = {}
    for dotted in sorted(_dotted_keys(schema), key=lambda d: d.count(".")):  # the shallowest of equal names
        anywhere.setdefault(dotted.rsplit(".", 1)[-1], dotted)
    if path[-1] in anywhere:
        return anywhere[path[-1]]
    near = difflib.get_close_matches(path[-1], list(siblings), n=1)
    if near:
        return ".".join(path[:-1] + near)
    near = difflib.get_close_matches(path[-1], list(anywhere), n=1, cutoff=0.4)
    return anywhere[near[0]] if near else None


def check_config(config: Dict[str, Any], schema: Dict[str, Any], where: str = "in the config") -> Dict[str, Any]:
    """Check every key of ``config`` against ``schema`` (:func:`config_schema`); returns ``config``.

    Raises :class:`~invrender.errors.ConfigError` for the first key the schema does not know, naming the
    closest known one (``difflib.get_close_matches``) or, failing that, the valid keys at that level, and
    for the first value of the wrong type, naming the key, the value and the expected type. ``where``
    says where the config came from ("in the overrides", "in FILE"). A mapping may also be null.
    """
    def walk(node: Dict[str, Any], spec: Dict[str, Any], path: List[str]) -> None:
        for key, value in node.items():
            dotted = ".".join(path + [str(key)])
            if key not in spec:
                near = _closest_key(path + [str(key)], spec, schema)
                hint = (f"did you mean {near!r}?" if near else
                        f"valid keys{' under ' + repr('.'.join(path)) if path else ''}: {', '.join(sorted(spec))}")
                raise ConfigError(f"unknown config key {dotted!r} {where}; {hint}")
            expected = spec[key]
            if isinstance(expected, dict):
                if isinstance(value, dict):
                    walk(value, expected, path + [str(key)])
                elif value is not None:
                    raise ConfigError(f"config key {dotted!r} {where} must be a mapping with the keys "
                                      f"{', '.join(sorted(expected))}, got {value!r}")
            elif not _matches(value, expected):
                raise ConfigError(f"config key {dotted!r} {where} must be {_describe(expected)}, got {value!r}")

    if not isinstance(config, dict):
        raise ConfigError(f"config {where} must be a mapping, got {type(config).__name__}")
    walk(config, schema, [])
    return config


def resolve_config(task=None, path=None, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """:data:`TRAIN_DEFAULTS` < ``task.default_config()`` < YAML file ``path`` < ``overrides``.

    With a ``task``, the file and the overrides are checked against :func:`config_schema` ``(task)``
    (:func:`check_config`): a misspelt key or a value of the wrong type raises
    :class:`~invrender.errors.ConfigError`."""
    schema = config_schema(task) if task is not None else None
    config = dict(TRAIN_DEFAULTS)
    if task is not None and hasattr(task, "default_config"):
        config = merge_config(config, task.default_config() or {})
    if path is not None:
        update = load_config(path)
        if schema is not None:
            check_config(update, schema, f"in {os.fspath(path)}")
        config = merge_config(config, update)
    return apply_overrides(config, overrides, schema)


def save_config(config: Dict[str, Any], path) -> None:
    """Write ``config`` as YAML (atomically)."""
    import yaml

    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    _atomic_write(path, lambda f: f.write(text.encode()))


# ------------------------------------------------------------------------------------------------
# devices, distributed, checkpoints


def resolve_device(device="auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:local_rank`` when CUDA is available, else CPU; ``"cuda"`` -> ``cuda:local_rank``.

    Raises :class:`~invrender.errors.ConfigError` for a name torch does not know and for a CUDA device
    where CUDA is not available."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {name!r} requested but CUDA is not available ({why})")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (or ``model`` itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the ``.grad`` of ``parameters`` over the processes of the default group, in place
    (one flat all-reduce). Without a process group, or with one process, nothing happens. A missing
    gradient counts as zeros (every process must pass the same parameters in the same order)."""
    world = _world_size()
    if world == 1:
        return
    params = list(parameters)
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy ``module``'s buffers (batchnorm running statistics and counters) from rank ``src`` to
    every process, as DDP does before each forward. No-op without a process group."""
    if _world_size() == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in nested dicts / lists / tuples / namedtuples moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)((k, move_to_device(v, device)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _open_mode(path: str) -> int:
    """The permission bits ``open(path, "w")`` leaves: the existing file's, else ``0o666`` less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0o022)  # the only way to read the umask portably is to set it
        os.umask(umask)
        return 0o666 & ~umask


def _atomic_write(path, write: Callable) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync, then ``os.replace``.

    The file gets the permissions a plain ``open`` would give it (:func:`_open_mode`). On any error the
    temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    mode = _open_mode(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600: give the file the mode open() would have
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def save_checkpoint(state: Dict[str, Any], path) -> None:
    """``torch.save(state)`` to ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (it holds numpy RNG states, so not weights-only)."""
    return torch.load(path, map_location=map_location, weights_only=False)


_CKPT_RE = re.compile(r"^step_(\d+)\.pt$")


def list_checkpoints(run_dir) -> List[Tuple[int, str]]:
    """``(step, path)`` of the checkpoints in ``run_dir/checkpoints``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(os.fspath(run_dir), "checkpoints", "step_*.pt")):
        m = _CKPT_RE.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir) -> Optional[str]:
    """Path of the newest checkpoint in ``run_dir`` (highest step), or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _get_rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def _preserved_rng(device: torch.device):
    state = _get_rng_state(device)
    try:
        yield
    finally:
        _set_rng_state(state, device)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can be entered part-way (``start`` = samples of this rank to skip).

    The order of epoch ``e`` is a pure function of ``(seed, e)`` (as in ``DistributedSampler``); with
    ``num_replicas=1`` it also serves single-process runs, so one process with the global batch and
    ``W`` processes with ``1/W`` of it see the same samples at every step (rank r takes every W-th
    index of the epoch's permutation).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


# ------------------------------------------------------------------------------------------------
# trainer


def _check_counts(config: Dict[str, Any]) -> None:
    """:class:`~invrender.errors.ConfigError` unless the trainer's counts (:data:`_TRAIN_COUNTS`) are
    integers in range (``steps=-3`` would train nothing and report success)."""
    for key, least in _TRAIN_COUNTS.items():
        value = config[key]
        if value is None and _matches(None, _TRAIN_TYPES.get(key, int)):
            continue
        if not _matches(value, int) or value < least:
            kind = "a positive integer" if least == 1 else "a non-negative integer"
            raise ConfigError(f"config key {key!r} must be {kind}, got {value!r}")


class Trainer:
    """Runs a task's training loop; see the module docstring for the protocol and guarantees.

    Args:
        task: a task object, or the name of a registered task.
        config: the resolved config dict (see :func:`resolve_config`); missing trainer keys take
            :data:`TRAIN_DEFAULTS`.
        run_dir: output directory (config, checkpoints, TensorBoard logs, samples).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``. Under DDP ``cuda`` means
            ``cuda:LOCAL_RANK``.
        resume: continue from the newest checkpoint in ``run_dir`` (if there is one).
        progress: show a tqdm progress bar (rank 0 only).

    ``fit()`` trains up to ``config["steps"]`` and returns the logged scalars (rank 0; a list of dicts).
    """

    def __init__(self, task, config: Dict[str, Any], run_dir, device="auto", resume: bool = False,
                 progress: bool = True):
        self.task_name = task if isinstance(task, str) else config.get("task", getattr(task, "name", None))
        self.task = get_task(task) if isinstance(task, str) else task
        self.config = merge_config(TRAIN_DEFAULTS, config)
        _check_counts(self.config)
        if self.task_name is not None:
            self.config["task"] = self.task_name
        self.run_dir = os.fspath(run_dir)
        self.requested_device = device
        self.resume = resume
        self.progress = progress
        self.history: List[Dict[str, Any]] = []

    # -- distributed setup ------------------------------------------------------------------------

    def _setup_distributed(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", str(self.rank)))
        self.distributed = "RANK" in os.environ and self.world_size > 1
        self._owns_group = False
        if self.distributed:
            device = resolve_device(self.requested_device, self.local_rank)
            if device.type == "cuda":
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                        timeout=datetime.timedelta(minutes=30))
                self._owns_group = True
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.world_size, self.rank = 1, 0
            device = resolve_device(self.requested_device, 0)
        self.device = device
        self.is_main = self.rank == 0

    # -- main loop ----------------------------------------------------------------------------------

    def fit(self) -> List[Dict[str, Any]]:
        self._setup_distributed()
        try:
            return self._fit()
        finally:
            if getattr(self, "writer", None) is not None:
                self.writer.close()
            if self._owns_group and dist.is_initialized():
                dist.destroy_process_group()

    def _build(self):
        cfg = self.config
        _seed_all(int(cfg["seed"]))  # same initialization on every rank
        built = self.task.build(cfg, self.device)
        if not isinstance(built, tuple) or len(built) not in (2, 3):
            raise TypeError("task.build must return (model, optimizers) or (model, optimizers, schedulers)")
        self.model, self.optimizers = built[0], dict(built[1])
        self.schedulers = dict(built[2]) if len(built) == 3 and built[2] is not None else {}

    def _fit(self) -> List[Dict[str, Any]]:
        cfg = self.config
        global_batch = int(cfg["batch_size"])
        if global_batch % self.world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by the world size {self.world_size}")
        self.local_batch = global_batch // self.world_size
        total_steps = int(cfg["steps"])

        self._build()
        model = self.model
        if self.distributed and getattr(self.task, "wrap_ddp", True):
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=bool(cfg["find_unused_parameters"]))
        self.ddp_model = model

        dataset = self.task.dataset(cfg, "train")
        self.sampler = ResumableDistributedSampler(dataset, self.world_size, self.rank,
                                                   shuffle=bool(cfg["shuffle"]), seed=int(cfg["seed"]))
        self.loader_generator = torch.Generator()
        workers = int(cfg["num_workers"])
        self.loader = DataLoader(dataset, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
                                 num_workers=workers, collate_fn=getattr(self.task, "collate_fn", None),
                                 pin_memory=self.device.type == "cuda", generator=self.loader_generator,
                                 persistent_workers=False)
        self.steps_per_epoch = self.sampler.num_samples // self.local_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(dataset)} samples) is smaller than one global batch "
                             f"({global_batch})")

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # Per-rank randomness for the steps (dropout, noise): seed + rank.
        _seed_all(int(cfg["seed"]) + self.rank)
        ckpt = None
        if self.resume:
            # Rank 0 reads the checkpoint and sends it to the others (no shared filesystem needed).
            if self.is_main:
                path = latest_checkpoint(self.run_dir)
                ckpt = load_checkpoint(path) if path is not None else None
            if self.distributed:
                box = [ckpt]
                dist.broadcast_object_list(box, src=0)
                ckpt = box[0]
        if ckpt is not None:
            self._restore(ckpt)

        self.writer = None
        if self.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            save_config(cfg, os.path.join(self.run_dir, "config.yaml"))
            self._truncate_log(self.step)
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: on resume, TensorBoard drops events logged after the checkpoint.
            self.writer = SummaryWriter(os.path.join(self.run_dir, "tb"),
                                        purge_step=self.step if ckpt is not None else None)
        self._vis_batch = None

        bar = None
        if self.is_main and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=self.step, desc=str(self.task_name or "train"), dynamic_ncols=True)

        sums: Dict[str, Any] = {}
        count, t0 = 0, time.perf_counter()
        last_saved = self.step if ckpt is not None else None
        batches = self._batches()
        model.train()
        while self.step < total_steps:
            batch = move_to_device(next(batches), self.device)
            losses = self.task.train_step(model, batch, self.optimizers, self.step)
            for sch in self.schedulers.values():
                sch.step()
            self.step += 1
            for k, v in (losses or {}).items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                sums[k] = sums[k] + v if k in sums else v
            count += 1
            if bar is not None:
                bar.update(1)

            log_every = int(cfg["log_every"] or 0)
            if (log_every and self.step % log_every == 0) or self.step == total_steps:
                record = self._reduce({k: v / count for k, v in sums.items()})
                elapsed = time.perf_counter() - t0
                record["time/step_s"] = elapsed / count
                record["time/samples_per_s"] = count * global_batch / max(elapsed, 1e-12)
                for name, opt in self.optimizers.items():
                    record[f"lr/{name}"] = float(opt.param_groups[0]["lr"])
                if self.is_main:
                    self._log(record, bar)
                bad = [k for k, v in record.items() if not math.isfinite(v)]
                if bad and cfg["stop_on_nonfinite"]:  # every rank sees the same reduced values
                    raise FloatingPointError(f"non-finite {', '.join(bad)} at step {self.step} "
                                             f"(the last checkpoint is still in {self.run_dir}/checkpoints)")
                sums, count, t0 = {}, 0, time.perf_counter()

            vis_every = int(cfg["vis_every"] or 0)
            if self.is_main and vis_every and self.step % vis_every == 0 and hasattr(self.task, "visualize"):
                self._visualize()

            ckpt_every = int(cfg["ckpt_every"] or 0)
            if (ckpt_every and self.step % ckpt_every == 0) or self.step == total_steps:
                self._checkpoint()
                last_saved = self.step
        if last_saved != self.step and self.step > 0:  # e.g. resumed at or past `steps`
            self._checkpoint()
        if bar is not None:
            bar.close()
        if self.distributed:
            dist.barrier()
        return self.history

    def _batches(self):
        """Endless batches; keeps (epoch, batch_in_epoch) = the position of the next batch."""
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch * self.local_batch)
            # Worker seeds come from this generator (not the global RNG): resuming never shifts the RNG.
            self.loader_generator.manual_seed(int(self.config["seed"]) * 1_000_003 + self.epoch)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _reduce(self, values: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Average scalars over ranks (all ranks must call it with the same keys)."""
        keys = sorted(values)
        if not keys:
            return {}
        vec = torch.stack([values[k].to(torch.float64).cpu() for k in keys])
        if self.distributed:
            vec = vec.to(self.device)
            dist.all_reduce(vec)
            vec = vec.cpu() / self.world_size
        return {k: float(v) for k, v in zip(keys, vec.tolist())}

    def _truncate_log(self, step: int) -> None:
        """Drop log.jsonl entries past ``step`` (written by a run that stopped after its last checkpoint)."""
        path = os.path.join(self.run_dir, "log.jsonl")
        if not os.path.exists(path):
            return
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                pass  # a line cut by a crash
        if len(keep) != len(lines):
            _atomic_write(path, lambda f: f.write("".join(keep).encode()))

    def _log(self, record: Dict[str, float], bar) -> None:
        for k, v in record.items():
            self.writer.add_scalar(k if "/" in k else f"train/{k}", v, self.step)
        self.writer.flush()
        entry = {"step": self.step, **record}
        self.history.append(entry)
        with open(os.path.join(self.run_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if "/" not in k}, refresh=False)

    # -- visualization ----------------------------------------------------------------------------

    def _visualization_batch(self):
        if self._vis_batch is None:
            try:
                data = self.task.dataset(self.config, "val")
            except (KeyError, ValueError, FileNotFoundError, NotImplementedError):
                data = None
            if data is None or len(data) == 0:
                data = self.task.dataset(self.config, "train")
            n = min(int(self.config["vis_batch_size"]), len(data))
            loader = DataLoader(data, batch_size=n, shuffle=False, collate_fn=getattr(self.task, "collate_fn", None))
            self._vis_batch = next(iter(loader))
        return move_to_device(self._vis_batch, self.device)

    def _visualize(self) -> None:
        from .io import image_grid, save_image

        out_dir = os.path.join(self.run_dir, "samples", f"step_{self.step:08d}")
        os.makedirs(out_dir, exist_ok=True)
        module = unwrap(self.model)
        was_training = module.training
        with _preserved_rng(self.device), torch.no_grad():
            batch = self._visualization_batch()
            module.eval()
            try:
                images = self.task.visualize(module, batch, out_dir, self.step) or {}
            finally:
                module.train(was_training)
        for name, img in images.items():
            img = img.detach().float().cpu().clamp(0, 1)
            if img.dim() == 4:
                img = image_grid(img, nrow=min(8, img.shape[0]))
            if img.dim() == 2:
                img = img[None]
            save_image(os.path.join(out_dir, f"{name.replace('/', '_')}.png"), img)
            self.writer.add_image(name if "/" in name else f"samples/{name}", img, self.step)
        self.writer.flush()

    # -- checkpoints ------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        rng = _get_rng_state(self.device)
        if self.distributed:
            states = [None] * self.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if self.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.world_size,
                "model": unwrap(self.model).state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "rng": states,
                "config": self.config,
                "task": self.task_name,
            }
            path = os.path.join(self.run_dir, "checkpoints", f"step_{self.step:08d}.pt")
            save_checkpoint(state, path)
            keep = self.config.get("keep_checkpoints")
            if keep:
                for _, old in list_checkpoints(self.run_dir)[:-int(keep)]:
                    with contextlib.suppress(OSError):
                        os.remove(old)
        if self.distributed:
            dist.barrier()

    def _restore(self, state: Dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sch in self.schedulers.items():
            if k in state.get("schedulers", {}):
                sch.load_state_dict(state["schedulers"][k])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if state.get("world_size", 1) != self.world_size:
            # Another world size: the per-rank data position and RNG streams cannot be continued exactly.
            self.epoch, self.batch_in_epoch = self.epoch + (self.batch_in_epoch > 0), 0
            return
        _set_rng_state(state["rng"][self.rank], self.device)


# ------------------------------------------------------------------------------------------------
# evaluation


def evaluate_run(run_dir, checkpoint=None, device="auto", out_dir=None,
                 overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Evaluate a run: rebuild its task from ``<run_dir>/config.yaml``, load a checkpoint (the newest
    by default), call ``task.evaluate(model, config, out_dir)`` with the model in eval mode, and write
    the metrics (plus ``step`` and ``checkpoint``) to ``<out_dir>/metrics.json``
    (``out_dir`` defaults to ``<run_dir>/eval``). Returns the metrics dict."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise MissingInputError(f"run directory {run_dir!r} not found")
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved):
        raise MissingInputError(f"{run_dir!r} is not a run directory: it has no config.yaml (written by training)")
    config = load_config(saved)
    if not config.get("task"):
        raise ConfigError(f"{saved} does not name its task (key 'task')")
    task = get_task(config["task"])
    config = apply_overrides(config, overrides, config_schema(task))
    if not hasattr(task, "evaluate"):
        raise NotImplementedError(f"task {config['task']!r} has no evaluate(model, config, out_dir)")
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    if checkpoint is None:
        raise MissingInputError(f"no checkpoint in {run_dir}/checkpoints")
    if not os.path.isfile(checkpoint):
        raise MissingInputError(f"checkpoint {os.fspath(checkpoint)!r} not found")
    dev = resolve_device(device)
    _seed_all(int(config.get("seed", 0)))
    built = task.build(config, dev)
    model = built[0]
    state = load_checkpoint(checkpoint)
    model.load_state_dict(state["model"])
    model.eval()
    out_dir = os.fspath(out_dir) if out_dir else os.path.join(run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    metrics = dict(task.evaluate(model, config, out_dir) or {})
    result = {"step": state.get("step"), "checkpoint": os.path.abspath(checkpoint), **metrics}
    text = json.dumps(result, indent=2, default=float)
    _atomic_write(os.path.join(out_dir, "metrics.json"), lambda f: f.write((text + "\n").encode()))
    return result
