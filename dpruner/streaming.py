"""Models larger than memory: blocks streamed from safetensors files through the one walk.

`load_skeleton` (models.py) builds the model with every parameter on the meta device.
`CheckpointBlocks` is the walk's `BlockSource` for such a skeleton: it loads the tensors outside
the decoder blocks (embeddings, final norm, lm_head) once, brings each block's tensors onto the
device from the memory-mapped safetensors files just before the walk uses it, and when the walk is
done with the block writes it (as pruned) to its own shard and puts it back on meta. At any moment
one block and the non-block tensors are materialised. `finish` completes a Hugging Face directory
(index, config, tokenizer) that `from_pretrained` loads like any other.

`streamed_safetensors` writes one safetensors file tensor by tensor (the header first, since
every name, shape and dtype is known before the walk), so per-weight scores never all sit in memory.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dpruner.calibration import BlockSource
from dpruner.models import (
    ModelError,
    check_loaded_tensors,
    decoder_blocks,
    parameter_counts,
    prunable_linears,
)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """Every tensor name of a safetensors checkpoint (one file or shards with an index) -> file."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        return {key: path / name for key, name in weight_map.items()}
    if (path / SINGLE_FILE).is_file():
        with safe_open(path / SINGLE_FILE, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), path / SINGLE_FILE)
    raise ModelError(
        f"{path}: streaming blocks needs safetensors weights, found neither {INDEX_FILE} "
        f"nor {SINGLE_FILE}"
    )


def _checkpoint_to_model_names(model: nn.Module, keys, path: Path) -> tuple[dict[str, str], set]:
    """(checkpoint key -> state_dict name, by the renamings `from_pretrained` applies; the
    renamed keys the model has no tensor for, but those transformers ignores on loading)."""
    from types import SimpleNamespace

    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    names, unexpected = {}, set()
    for key in keys:
        name, pattern = rename_source_key(
            key, renamings, converters, getattr(model, "base_model_prefix", None), meta
        )
        if pattern is not None:
            raise ModelError(
                f"{path}: tensor {key} needs a weight conversion on loading ({pattern}), which "
                "streaming does not do; prune this model without --stream-blocks"
            )
        if name in meta:
            names[key] = name
        else:
            unexpected.add(name)
    # from_pretrained's own filter: patterns of the model class and legacy buffers (inv_freq).
    info = SimpleNamespace(missing_keys=set(), unexpected_keys=unexpected)
    model._adjust_missing_and_unexpected_keys(info)
    return names, info.unexpected_keys


def _tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Every name a tensor goes by: a tied lm_head and the embedding are one tensor.

    A skeleton built under `init_empty_weights` is not tied by identity, so the model's own list
    of tied keys (target -> source) is merged with the names that share a parameter.
    """
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    aliases = {name: group for group in groups.values() for name in group}
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in aliases and source in aliases and target not in aliases[source]:
            group = aliases[source] + aliases[target]
            for name in group:
                aliases[name] = group
    return aliases


def _header_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...] | None]:
    """Every checkpoint key's shape from its file's header (no tensor is read); None where the
    file does not hold it (an index naming the wrong shard)."""
    by_file: dict[Path, list[str]] = {}
    for key, file in files.items():
        by_file.setdefault(file, []).append(key)
    shapes = {}
    for file, keys in by_file.items():
        with safe_open(file, framework="pt") as handle:
            held = set(handle.keys())
            for key in keys:
                shapes[key] = tuple(handle.get_slice(key).get_shape()) if key in held else None
    return shapes


def _checkpoint_problems(model: nn.Module, names, unexpected, files, aliases) -> dict:
    """from_pretrained's loading info for a streamed checkpoint, from the headers alone."""
    shapes, meta = _header_shapes(files), model.state_dict()
    held = {name for key, name in names.items() if shapes[key] is not None}
    return {
        "missing_keys": {
            name
            for name, _ in model.named_parameters()
            if not held & set(aliases.get(name, [name]))
        },
        "unexpected_keys": unexpected,
        "mismatched_keys": {
            (key, shapes[key], tuple(meta[name].shape))
            for key, name in names.items()
            if shapes[key] not in (None, tuple(meta[name].shape))
        },
    }


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def materialised_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters that are not on the meta device (a tied one counted once,
    also where `CheckpointBlocks` gave the tied names two parameters over one tensor)."""
    tensors = {
        (p.data_ptr(), p.numel() * p.element_size()) for p in model.parameters() if not p.is_meta
    }
    return sum(size for _, size in tensors)


class CheckpointBlocks(BlockSource):
    """Blocks of a `load_skeleton` model, streamed from the safetensors files in `path`.

    With `out_dir`, the pruned model is written there as the walk goes: one shard for the
    non-block tensors, one per block; `finish` adds the index, config and tokenizer.
    """

    def __init__(
        self,
        model: nn.Module,
        path: str | Path,
        device: torch.device | str = "cpu",
        out_dir: str | Path | None = None,
    ):
        self.model, self.path, self.device = model, Path(path), torch.device(device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.files = checkpoint_files(self.path)
        names, unexpected = _checkpoint_to_model_names(model, self.files, self.path)
        self.aliases = _tied_names(model)
        # Every tensor checked before any is read: a missing one would stay on meta, found only
        # when the walk reaches its block.
        check_loaded_tensors(
            self.path, _checkpoint_problems(model, names, unexpected, self.files, self.aliases)
        )
        self.prefix, blocks = decoder_blocks(model)
        self.block_keys: list[list[str]] = [[] for _ in blocks]
        outside = []
        for key, name in names.items():
            index = self._block_of(name, len(blocks))
            (outside if index is None else self.block_keys[index]).append(key)
        self.names = names
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.zeros = 0
        self.shards = len(blocks) + 1
        self._load(outside)
        self._write(0, outside)

    def _block_of(self, name: str, n_blocks: int) -> int | None:
        head = f"{self.prefix}."
        if not name.startswith(head):
            return None
        index = name[len(head) :].split(".", 1)[0]
        return int(index) if index.isdigit() and int(index) < n_blocks else None

    def _load(self, keys: list[str]) -> None:
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.files[key], []).append(key)
        for file, file_keys in by_file.items():
            with safe_open(file, framework="pt", device="cpu") as handle:
                for key in file_keys:
                    name = self.names[key]
                    target = self.model.get_parameter_or_buffer(name)
                    value = handle.get_tensor(key)
                    dtype = target.dtype if value.is_floating_point() else value.dtype
                    value = value.to(device=self.device, dtype=dtype)
                    for alias in self.aliases.get(name, [name]):
                        _assign(self.model, alias, value)

    def _write(self, shard: int, keys: list[str]) -> None:
        if self.out_dir is None:
            return
        file = f"model-{shard + 1:05d}-of-{self.shards:05d}.safetensors"
        tensors = {
            key: self.model.get_parameter_or_buffer(self.names[key]).detach().contiguous().cpu()
            for key in keys
        }
        save_file(tensors, str(self.out_dir / file), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            self.weight_map[key] = file
            self.total_size += tensor.numel() * tensor.element_size()

    def load(self, index: int, block: nn.Module) -> None:
        self._load(self.block_keys[index])

    def release(self, index: int, block: nn.Module) -> None:
        self.zeros += sum(int((m.weight == 0).sum()) for m in prunable_linears(block).values())
        self._write(index + 1, self.block_keys[index])
        for module in block.modules():
            for leaf, param in module._parameters.items():
                if param is not None:
                    module._parameters[leaf] = nn.Parameter(
                        torch.empty_like(param, device="meta"), requires_grad=False
                    )

    def measured_sparsity(self) -> dict:
        """As `models.measured_sparsity`, from the zeros counted as the blocks were released."""
        linear, total = parameter_counts(self.model)
        return {
            "sparsity_linear": self.zeros / linear,
            "sparsity_total": self.zeros / total,
            "zeros": self.zeros,
        }

    def finish(self, tokenizer) -> None:
        """Index, config and tokenizer: `out_dir` becomes a complete Hugging Face directory."""
        if self.out_dir is None:
            return
        written = set(self.weight_map.values())
        if len(written) != self.shards:
            raise ModelError(
                f"{self.out_dir}: only {len(written)} of {self.shards} shards were written"
            )
        index = {
            "metadata": {"total_size": self.total_size},
            "weight_map": dict(sorted(self.weight_map.items())),
        }
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        self.model.config.save_pretrained(self.out_dir)
        generation = self.path / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, self.out_dir / generation.name)
        tokenizer.save_pretrained(self.out_dir)


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


@contextmanager
def streamed_safetensors(
    path: str | Path,
    shapes: dict[str, tuple[int, ...]],
    metadata: dict,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Callable[[str, torch.Tensor], None]]:
    """Yield `write(name, tensor)`, to be called once per name of `shapes`, in that order.

    The file is written to a temporary sibling and renamed onto `path` only when every tensor
    arrived; `safetensors.torch.load_file` reads it like any other.
    """
    from dpruner.io import atomic_output

    header, offset = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0
    for name, shape in shapes.items():
        size = int(torch.Size(shape).numel()) * dtype.itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    expected = iter(shapes.items())
    with atomic_output(path) as tmp, open(tmp, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)

        def write(name: str, tensor: torch.Tensor) -> None:
            want, shape = next(expected, (None, None))
            if name != want or tuple(tensor.shape) != tuple(shape):
                raise ValueError(
                    f"{path}: expected {want} {shape} next, got {name} {tuple(tensor.shape)}"
                )
            data = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
            file.write(data.view(torch.uint8).numpy().tobytes())

        yield write
        left = [name for name, _ in expected]
        if left:
            raise ValueError(f"{path}: {len(left)} tensors were never written, e.g. {left[0]}")
