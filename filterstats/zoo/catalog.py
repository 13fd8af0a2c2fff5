"""The paper's 71 robust RobustBench models and their normally trained twins, as package data.

Gavrikov & Keuper (CVPR-W 2022) compared every RobustBench L-infinity model of
early 2022 (49 CIFAR-10, 17 CIFAR-100, 5 ImageNet; ``Standard``, ``Standard_R50``
and ``Kang2021Stable`` excluded) with a normally trained model of the same
architecture. ``data/paper_models.csv`` lists these pairs. Its sources, all in
the authors' public repository ``paulgavrikov/cvpr22w_RobustnessThroughTheLens``:
``robust_vs_normal_pairings.csv`` (the pairs, in this order), ``meta.csv``
(accuracies, links), the RobustBench model-info JSON files (clean and AutoAttack
accuracy of the robust models, extra data) and ``pca_dict.cpkl`` (per-model
counts of non-sparse 3x3 filters and the first explained-variance ratio). The
ImageNet twins are timm's ``resnet18``, ``resnet50`` and ``wide_resnet50_2``;
the CIFAR twins were retrained by the authors (AutoAttack accuracy 0).
``n_3x3_filters`` (sum over 3x3 convolutions of ``C_out * C_in / groups``) is
derived from each architecture; ``n_3x3_source`` says how.

[`paper_pairs`][filterstats.zoo.catalog.paper_pairs] returns a
[`PaperCatalog`][filterstats.zoo.catalog.PaperCatalog]: a tuple-like sequence of
frozen [`PaperPair`][filterstats.zoo.catalog.PaperPair] records (no pandas
needed), with ``.to_pandas()`` for a DataFrame when pandas is installed.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any, overload

from filterstats._optional import require

__all__ = ["PaperCatalog", "PaperPair", "paper_pairs"]


@dataclass(frozen=True)
class PaperPair:
    """One robust model of the paper and its normally trained twin.

    Attributes:
        robust_model: The paper's identifier of the robust model.
        paper_id: RobustBench model name, e.g. ``"Carmon2019Unlabeled"``.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        architecture: Architecture, e.g. ``"WideResNet-28-10"``.
        normal_model: The paper's identifier of the normally trained twin.
        normal_twin_source: Where the twin comes from (retrained or timm).
        robust_clean_acc: Clean accuracy of the robust model, in percent.
        robust_autoattack_acc: AutoAttack L-infinity accuracy (8/255 on CIFAR,
            4/255 on ImageNet) of the robust model, in percent.
        normal_clean_acc: Clean accuracy of the twin, in percent.
        normal_autoattack_acc: AutoAttack accuracy of the twin, in percent;
            ``None`` for the timm ImageNet twins (not evaluated).
        robust_extra_data: Whether the robust model used extra training data.
        paper_link: Link to the robust model's paper.
        n_3x3_filters: Number of 3x3 filters, ``sum(C_out * C_in / groups)``.
        n_3x3_source: How ``n_3x3_filters`` was obtained.
        robust_nonsparse_3x3: Non-sparse 3x3 filters of the robust model.
        normal_nonsparse_3x3: Non-sparse 3x3 filters of the twin.
        robust_sparse_share: ``1 - robust_nonsparse_3x3 / n_3x3_filters``.
        normal_sparse_share: ``1 - normal_nonsparse_3x3 / n_3x3_filters``.
        robust_pca_evr_v0: Explained-variance ratio of the first principal
            component of the robust model's scaled non-sparse filters.
        normal_pca_evr_v0: The same for the twin.
    """

    robust_model: str
    paper_id: str
    dataset: str
    architecture: str
    normal_model: str
    normal_twin_source: str
    robust_clean_acc: float
    robust_autoattack_acc: float
    normal_clean_acc: float
    normal_autoattack_acc: float | None
    robust_extra_data: bool
    paper_link: str
    n_3x3_filters: int
    n_3x3_source: str
    robust_nonsparse_3x3: int
    normal_nonsparse_3x3: int
    robust_sparse_share: float
    normal_sparse_share: float
    robust_pca_evr_v0: float
    normal_pca_evr_v0: float


@dataclass(frozen=True)
class PaperCatalog(Sequence[PaperPair]):
    """The paper's pairs: a read-only sequence of [`PaperPair`][filterstats.zoo.catalog.PaperPair].

    Attributes:
        pairs: The records, in the paper's order.
    """

    pairs: tuple[PaperPair, ...]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PaperPair]:
        return iter(self.pairs)

    @overload
    def __getitem__(self, index: int) -> PaperPair: ...

    @overload
    def __getitem__(self, index: slice) -> PaperCatalog: ...

    def __getitem__(self, index: int | slice) -> PaperPair | PaperCatalog:
        if isinstance(index, slice):
            return PaperCatalog(self.pairs[index])
        return self.pairs[index]

    def where(self, **equal: Any) -> PaperCatalog:
        """Keep the pairs whose fields equal the given values, ``where(dataset="cifar100")``.

        Args:
            **equal: Field names of [`PaperPair`][filterstats.zoo.catalog.PaperPair]
                and the values to keep.

        Returns:
            A catalog of the matching pairs, in the original order.
        """
        names = {field.name for field in fields(PaperPair)}
        unknown = set(equal) - names
        if unknown:
            raise TypeError(f"PaperPair has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        return PaperCatalog(
            tuple(
                pair for pair in self.pairs if all(getattr(pair, k) == v for k, v in equal.items())
            )
        )

    def to_records(self) -> list[dict[str, Any]]:
        """The pairs as JSON-ready dicts, one per pair.

        Returns:
            One dict per pair, keys in field order.
        """
        return [asdict(pair) for pair in self.pairs]

    def to_pandas(self) -> Any:
        """The pairs as a ``pandas.DataFrame`` (extra ``filterstats[pandas]``).

        Returns:
            A DataFrame with one row per pair and one column per field.
        """
        pandas = require("pandas", extra="pandas")
        return pandas.DataFrame(
            self.to_records(), columns=[field.name for field in fields(PaperPair)]
        )

    def __repr__(self) -> str:
        lines = [f"PaperCatalog({len(self.pairs)} robust/normal pairs)"]
        for pair in self.pairs[:10]:
            lines.append(
                f"  {pair.paper_id:<40} {pair.dataset:<9} {pair.architecture:<18} "
                f"{pair.n_3x3_filters:>12,}"
            )
        if len(self.pairs) > 10:
            lines.append(f"  ... {len(self.pairs) - 10} more")
        return "\n".join(lines)


def paper_pairs() -> PaperCatalog:
    """The paper's 71 robust models with their normally trained twins.

    Returns:
        A [`PaperCatalog`][filterstats.zoo.catalog.PaperCatalog] of 71 pairs
        (49 CIFAR-10, 17 CIFAR-100, 5 ImageNet), in the paper's order.

    Examples:
        >>> pairs = paper_pairs()
        >>> len(pairs), pairs[0].paper_id, pairs[0].n_3x3_filters
        (71, 'Andriushchenko2020Understanding', 1220800)
        >>> len(pairs.where(dataset="imagenet"))
        5
    """
    return _load()


@functools.lru_cache(maxsize=1)
def _load() -> PaperCatalog:
    text = resources.files("filterstats.zoo").joinpath("data/paper_models.csv").read_text("utf-8")
    types = {field.name: field.type for field in fields(PaperPair)}
    pairs = []
    for row in csv.DictReader(io.StringIO(text)):
        values: dict[str, Any] = {}
        for name, kind in types.items():
            raw = row[name]
            if kind == "int":
                values[name] = int(raw)
            elif kind == "float":
                values[name] = float(raw)
            elif kind == "float | None":
                values[name] = float(raw) if raw else None
            elif kind == "bool":
                values[name] = {"True": True, "False": False}[raw]
            else:
                values[name] = raw
        pairs.append(PaperPair(**values))
    return PaperCatalog(tuple(pairs))
