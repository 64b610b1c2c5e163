"""D-Pruner's scores files: safetensors of one score matrix per prunable weight (G from
`general-importance`, S from `domain-scores`), and the metadata that says what made them.

A file's metadata holds `kind` (the step), `model_fingerprint` (the dense model,
dpruner.fingerprint) and `sparsity` (of G; domain scores carry their G's, none without G), so a
step refuses scores of another kind, model or sparsity before it reads them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dpruner.errors import DprunerError
from dpruner.fingerprint import model_fingerprint
from dpruner.io import atomic_output
from dpruner.models import prunable_weights, weight_matrix

SCORE_KINDS = ("general_importance", "domain_scores")


def save_scores(scores: dict[str, torch.Tensor], path, metadata: dict) -> None:
    with atomic_output(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in scores.items()},
            str(tmp),
            metadata={k: str(v) for k, v in metadata.items()},
        )


def scores_provenance(kind: str, model_dir, sparsity: float | None) -> dict:
    """The metadata keys `check_scores` compares, for a scores file made from `model_dir`."""
    provenance = {"kind": kind, "model_fingerprint": model_fingerprint(model_dir)}
    return provenance if sparsity is None else {**provenance, "sparsity": sparsity}


def scores_metadata(path) -> dict[str, str]:
    try:
        with safe_open(str(score_file(path)), framework="pt") as scores:
            return scores.metadata() or {}
    except DprunerError:
        raise
    except Exception as error:  # safetensors raises its own error types
        raise DprunerError(f"{path}: not a safetensors scores file ({error})") from None


def check_scores(
    path, option: str, model_dir, kinds: tuple[str, ...], sparsity: float | None = None
) -> dict[str, str]:
    """The metadata of the scores file `path` (given as `option`), after refusing one that is not
    a dpruner scores file of `kinds`, was made from another model than `model_dir` or, when
    `sparsity` is given and the file records one, at another sparsity."""
    metadata = scores_metadata(path)
    kind = metadata.get("kind")
    if kind not in SCORE_KINDS:
        raise DprunerError(
            f"{option} {path} is not a dpruner scores file: its metadata key kind is "
            f"{kind!r}, a scores file's is {' or '.join(SCORE_KINDS)}"
        )
    if kind not in kinds:
        raise DprunerError(
            f"{option} {path}: kind is {kind!r} in the file, {option} takes {' or '.join(kinds)}"
        )
    recorded = metadata.get("model_fingerprint")
    if recorded is None:
        raise DprunerError(
            f"{option} {path} has no model_fingerprint in its metadata (made by a dpruner that "
            "did not record its model): delete it to remake it"
        )
    expected = model_fingerprint(model_dir)
    if recorded != expected:
        raise DprunerError(
            f"{option} {path} was made from another model: model_fingerprint is {recorded!r} in "
            f"the file, {expected!r} for --model {model_dir}"
        )
    recorded = metadata.get("sparsity")
    if sparsity is not None and recorded is not None and not _same_sparsity(recorded, sparsity):
        raise DprunerError(
            f"{option} {path} was made at another sparsity: sparsity is {recorded} in the file, "
            f"{sparsity:g} for --sparsity"
        )
    return metadata


def _same_sparsity(recorded: str, sparsity: float) -> bool:
    try:
        return float(recorded) == sparsity
    except ValueError:
        return False


def check_score_shapes(path, shapes: dict[str, tuple[int, ...]], model: nn.Module) -> None:
    """Every prunable weight of `model` has a score matrix of its shape in `path`."""
    expected = {name: tuple(weight_matrix(m).shape) for name, m in prunable_weights(model).items()}
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise DprunerError(f"{path} has no scores for {len(missing)} matrices, e.g. {missing[0]}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise DprunerError(
                f"{path}: scores for {name} have shape {tuple(shapes[name])}, "
                f"the model's weight has {shape}"
            )


def score_file(path) -> Path:
    if not Path(path).is_file():
        raise DprunerError(f"score file not found: {path}")
    return Path(path)


def load_scores(path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    scores = load_file(str(score_file(path)))
    if model is not None:
        check_score_shapes(path, {k: tuple(v.shape) for k, v in scores.items()}, model)
    return scores
