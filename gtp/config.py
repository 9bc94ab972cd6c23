"""GTP hyper-parameters, their published defaults and their validation."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence, Union

from .functional import GRAPHS, PROPAGATIONS, SELECTIONS

# The published setting (METHOD.md sections 5 and 6; DeiT-B with P = 8).
PUBLISHED = dict(
    num_prop=8, sparsity=0.6, alpha=0.1, graph="mixed", num_neighbours=8,
    selection="mixed_attn_max", propagation="graph", token_scale=True,
)


@dataclass
class GTPConfig:
    """One GTP configuration, resolved for a model with `depth` blocks.

    num_prop holds P for every block (a per-block schedule).
    """
    num_prop: list[int] = field(default_factory=list)
    sparsity: float = PUBLISHED["sparsity"]
    alpha: float = PUBLISHED["alpha"]
    graph: str = PUBLISHED["graph"]
    num_neighbours: int = PUBLISHED["num_neighbours"]
    selection: str = PUBLISHED["selection"]
    propagation: str = PUBLISHED["propagation"]
    token_scale: bool = PUBLISHED["token_scale"]

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        """True when the patched model computes exactly what the unpatched one does."""
        return not any(self.num_prop) and self.sparsity >= 1.0 and not self.token_scale


def _one_of(name: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")
    return value


def make_config(
        depth: int,
        num_patches: int,
        num_prefix: int,
        num_prop: Union[int, Sequence[int]] = PUBLISHED["num_prop"],
        sparsity: float = PUBLISHED["sparsity"],
        alpha: float = PUBLISHED["alpha"],
        graph: str = PUBLISHED["graph"],
        num_neighbours: int = PUBLISHED["num_neighbours"],
        selection: str = PUBLISHED["selection"],
        propagation: str = PUBLISHED["propagation"],
        token_scale: bool = PUBLISHED["token_scale"],
) -> GTPConfig:
    """Check every hyper-parameter against a model and return the resolved config.

    Raises ValueError naming the valid range for anything out of it.
    """
    if isinstance(num_prop, bool) or not isinstance(num_prop, (int, list, tuple)):
        raise ValueError(f"num_prop must be an int or a list of {depth} ints; got {num_prop!r}")
    schedule = [num_prop] * depth if isinstance(num_prop, int) else list(num_prop)
    if len(schedule) != depth:
        raise ValueError(f"a per-block num_prop needs one entry per block: {depth} entries; got {len(schedule)}")
    for p in schedule:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < num_patches:
            raise ValueError(
                f"num_prop must be an int in [0, {num_patches - 1}] (the model has {num_patches} patch "
                f"tokens; propagating all of them would leave none); got {p!r}")
    try:
        sparsity = float(sparsity)
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity and alpha must be numbers; got {sparsity!r}, {alpha!r}") from None
    if not 0.0 < sparsity <= 1.0:
        raise ValueError(f"sparsity (theta) must be in (0, 1] (1 = no sparsification); got {sparsity}")
    if not alpha >= 0.0 or alpha == float("inf"):
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha}")
    _one_of("graph", graph, GRAPHS)
    _one_of("selection", selection, SELECTIONS)
    _one_of("propagation", propagation, PROPAGATIONS)
    if graph != "spatial" and not (isinstance(num_neighbours, int) and 1 <= num_neighbours < num_patches):
        raise ValueError(
            f"num_neighbours (M) must be an int in [1, {num_patches - 1}]; got {num_neighbours!r}")
    if selection.startswith("cls_attn") and num_prefix == 0:
        raise ValueError(f"selection {selection!r} needs a CLS token and this model has none")
    return GTPConfig(
        num_prop=schedule, sparsity=sparsity, alpha=alpha, graph=graph,
        num_neighbours=int(num_neighbours), selection=selection,
        propagation=propagation, token_scale=bool(token_scale),
    )
