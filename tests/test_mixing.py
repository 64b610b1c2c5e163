"""Mixed calibration (dpruner/data/mixing.py): exact shares, seeded draws, rows of one length."""

import pytest
import torch

from dpruner.data.mixing import mix_calibration, rows_of_length
from dpruner.errors import DataError


def token_rows(n: int, length: int, first: int) -> torch.Tensor:
    """n distinct rows; every token of the set is unique (first, first + 1, ...)."""
    return torch.arange(first, first + n * length).view(n, length)


def source_of(row: torch.Tensor, sets: dict[str, torch.Tensor]) -> str:
    """The name of the set that holds `row` as one of its rows."""
    (name,) = [name for name, rows in sets.items() if bool((rows == row).all(dim=1).any())]
    return name


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_the_mix_holds_exactly_the_domain_share_of_domain_rows(share):
    general, domain = token_rows(30, 8, 0), token_rows(10, 8, 10_000)
    mix = mix_calibration(general, domain, share, seed=0)
    sources = [source_of(row, {"general": general, "domain": domain}) for row in mix.tokens]
    n_domain = round(share * 10)
    assert sources == ["domain"] * n_domain + ["general"] * (10 - n_domain)
    assert len({tuple(row.tolist()) for row in mix.tokens}) == 10  # drawn without replacement
    assert mix.summary() == {
        "rows": 10, "row_length": 8, "domain_rows": n_domain, "general_rows": 10 - n_domain
    }  # fmt: skip
    assert torch.equal(mix.tokens[:n_domain], domain[mix.domain_rows])
    assert torch.equal(mix.tokens[n_domain:], general[mix.general_rows])


def test_the_draw_is_seeded_and_reproducible():
    general, domain = token_rows(30, 8, 0), token_rows(20, 8, 10_000)
    first = mix_calibration(general, domain, 0.5, seed=3)
    again = mix_calibration(general, domain, 0.5, seed=3)
    other = mix_calibration(general, domain, 0.5, seed=4)
    assert torch.equal(first.tokens, again.tokens)
    assert (first.domain_rows, first.general_rows) != (other.domain_rows, other.general_rows)
    # A share of 1 is the domain set itself, in order.
    assert torch.equal(mix_calibration(general, domain, 1.0, seed=3).tokens, domain)


def test_longer_rows_are_cut_into_rows_of_the_shorter_length():
    general, domain = token_rows(4, 18, 0), token_rows(6, 8, 10_000)
    # 18 = 2 x 8 + 2: two rows of 8 per general row, the last 2 tokens dropped.
    cut = rows_of_length(general, 8)
    assert cut.shape == (8, 8)
    assert torch.equal(cut[1], general[0, 8:16]) and torch.equal(cut[2], general[1, :8])
    mix = mix_calibration(general, domain, 0.5, seed=0)
    assert mix.tokens.shape == (6, 8)
    assert [source_of(row, {"general": cut, "domain": domain}) for row in mix.tokens] == (
        ["domain"] * 3 + ["general"] * 3
    )
    # Domain rows longer than the general ones are cut the same way: n counts the cut rows.
    assert mix_calibration(token_rows(9, 4, 0), domain, 0.5, seed=0).tokens.shape == (12, 4)


def test_too_few_general_rows_and_a_share_outside_0_1_are_named():
    general, domain = token_rows(2, 8, 0), token_rows(10, 8, 10_000)
    with pytest.raises(DataError, match="needs 5 general calibration rows of 8 tokens.*has 2"):
        mix_calibration(general, domain, 0.5, seed=0)
    with pytest.raises(DataError, match="domain_share must lie in \\[0, 1\\], got 1.5"):
        mix_calibration(general, domain, 1.5, seed=0)
