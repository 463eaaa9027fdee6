"""``prune()``: the one-call API around the ``prune`` pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch.fx as fx
import torch.nn as nn

from .. import defaults
from ..errors import InputError, PassError
from ..ir.capture import capture_or_copy
from ..passes.manager import PassManager
from .prune_pass import Prune, matches_module, validate_options


def prune(
    model: nn.Module,
    example_inputs,
    ratio: float = defaults.PRUNE_RATIO,
    importance: str = defaults.PRUNE_IMPORTANCE,
    scope: str = defaults.PRUNE_SCOPE,
    round_to: int = defaults.PRUNE_ROUND_TO,
    ignore: Iterable[str | nn.Module] = (),
    calib: Iterable[tuple] | None = None,
    *,
    example_kwargs: dict | None = None,
    ratios: dict[str, float] | None = None,
    floor: float = defaults.PRUNE_FLOOR,
    seed: int = defaults.SEED,
    loss_fn: Callable | None = None,
    reconstruct: bool | str = defaults.PRUNE_RECONSTRUCT,
    check: bool = True,
) -> fx.GraphModule:
    """Structured pruning; returns a new, physically smaller module (the caller's model is untouched).

    Args:
        ratio: fraction of units (channels, FFN neurons, attention heads) removed from each prunable group.
        importance: "auto" (default: "act" when ``calib`` is given, else "l2") | "l1" | "l2" | "act"
            (activation-aware, needs ``calib``) | "bn-scale" | "taylor" | "random".
        scope: "local" (every group loses ``ratio``) or "global" (one normalized ranking, with ``floor``).
        round_to: kept widths are rounded up to a multiple of this (1 = exactly ``ratio``).
        ignore: module names (fnmatch patterns allowed) or module objects never to prune.
        calib: batches (tuples of inputs) for ``act`` and ``taylor`` importance and for ``reconstruct``;
            default the example inputs.
        ratios: per-group overrides keyed by "heads", "channels" or a module pattern.
        reconstruct: refit every linear layer that loses input columns (FFN down-projections, attention
            output projections) by least squares on ``calib``, so kept channels take over what removed ones
            carried. Needs at least as many calibration rows (tokens) as the layer has kept inputs. "auto"
            (default): on when ``calib`` is given.

    Defaults come from :mod:`slimgraph.defaults`, shared with ``slimgraph prune`` and ``sg.compress``.
    """
    importance = defaults.resolve_importance(importance, has_data=calib is not None)
    reconstruct = defaults.resolve_reconstruct(reconstruct, has_data=calib is not None)
    validate_options(ratio, importance, scope, round_to, ratios, floor)
    names = _ignore_names(model, ignore)
    modules = [n for n, _ in model.named_modules()] if isinstance(model, nn.Module) else []
    for name in names:
        if not any(matches_module(m, name) for m in modules):
            raise InputError(f"ignore names module {name!r}, which the model does not have; use names from "
                             "model.named_modules()")
    gm = capture_or_copy(model, example_inputs, example_kwargs)
    p = Prune(ratio=ratio, importance=importance, scope=scope, round_to=round_to, ignore=tuple(names),
              ratios=ratios, floor=floor, seed=seed, reconstruct=reconstruct).with_data(calib=calib, loss_fn=loss_fn)
    try:
        return PassManager([p], check_numerics=check).run(gm).gm
    except PassError as exc:
        if isinstance(exc.__cause__, InputError):  # e.g. a ratios key naming nothing: the user's error
            raise exc.__cause__ from None
        raise


def _ignore_names(model: nn.Module, ignore) -> list[str]:
    names = []
    by_id = {id(m): n for n, m in model.named_modules()} if isinstance(model, nn.Module) else {}
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise InputError(f"ignore contains a {type(item).__name__} that is not a submodule of the model")
            names.append(by_id[id(item)])
        elif isinstance(item, str):
            names.append(item)
        else:
            raise InputError(f"ignore entries must be module names or modules, got {type(item).__name__}")
    return names
