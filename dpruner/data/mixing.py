"""Mixed calibration: general and domain calibration rows in one set (methods beyond the paper).

The mixed set has as many rows as the domain set, so a mixed model calibrates on as many tokens
as the domain-calibrated baseline it is compared with; round(domain_share * rows) of them are
domain rows, the rest general rows, each drawn without replacement by a seeded generator. The
two sets may have different row lengths (with `match_dpruner` the domain rows are D-Pruner's
instances cut at its max_length, the general rows `seqlen`-token windows): both are first cut
into consecutive rows of the shorter length, any remainder of a row dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpruner.errors import DataError


@dataclass
class MixedCalibration:
    tokens: torch.Tensor  # rows x row_length: the domain rows, then the general rows
    domain_rows: list[int]  # which rows of the domain set (at row_length), in order
    general_rows: list[int]  # which rows of the general set (at row_length), in order

    def summary(self) -> dict:
        return {
            "rows": self.tokens.shape[0],
            "row_length": self.tokens.shape[1],
            "domain_rows": len(self.domain_rows),
            "general_rows": len(self.general_rows),
        }


def rows_of_length(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """Every row of `tokens` cut into floor(L / length) consecutive rows of `length`."""
    per_row = tokens.shape[1] // length
    return tokens[:, : per_row * length].reshape(-1, length)


def mix_calibration(
    general: torch.Tensor, domain: torch.Tensor, domain_share: float, seed: int
) -> MixedCalibration:
    """round(domain_share * n) domain rows and n minus that general rows, n = the domain rows."""
    if not 0 <= domain_share <= 1:
        raise DataError(f"domain_share must lie in [0, 1], got {domain_share}")
    length = min(general.shape[1], domain.shape[1])
    general, domain = rows_of_length(general, length), rows_of_length(domain, length)
    n_domain = round(domain_share * domain.shape[0])
    n_general = domain.shape[0] - n_domain
    if n_general > general.shape[0]:
        raise DataError(
            f"a domain share of {domain_share} of {domain.shape[0]} rows needs {n_general} general "
            f"calibration rows of {length} tokens, but the general set has {general.shape[0]}"
        )
    generator = torch.Generator().manual_seed(seed)
    domain_rows = torch.randperm(domain.shape[0], generator=generator)[:n_domain].sort().values
    general_rows = torch.randperm(general.shape[0], generator=generator)[:n_general].sort().values
    return MixedCalibration(
        tokens=torch.cat([domain[domain_rows], general[general_rows]]),
        domain_rows=domain_rows.tolist(),
        general_rows=general_rows.tolist(),
    )
