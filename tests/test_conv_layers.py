"""Conv layers as WeightWatcher 0.7.5.5 reads them (antigrok.spectra.kernels): its kernel slices and (N, M)
read from WeightWatcher's own WWLayer, then whole layers and whole small conv nets given to
WeightWatcher itself, against analyze_state_dict, ``antigrok analyze`` and the monitor, to 1e-12."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from antigrok import cli
from antigrok import htsr
from antigrok.spectra import kernels
from antigrok.spectra.primitives import layer_seed
from antigrok.spectra.ww_engine import import_weightwatcher
from test_fastspectra import assert_rel

REL = 1e-12
# What is compared, to REL (counts exactly): the power-law fit, the MP fit of the shuffled spectrum,
# WeightWatcher's trap count and the norm columns.
FIT_KEYS = ["alpha", "raw_alpha", "xmin", "xmax", "pl_ks_distance", "rand_sigma_mp", "rand_lambda_plus",
            "max_rand_eval", "log_norm", "log_spectral_norm", "stable_rank"]
COUNT_KEYS = ["rows", "cols", "num_evals", "num_fingers", "num_pl_spikes", "ww_num_traps"]

# (out, in, kh, kw) and (out, in, k): plain, out < in, WeightWatcher's N < M swap (even kernel with
# out < in), 1x1, few input channels, depthwise-like (in = 1), its "channels first" guess, Conv1d.
KERNEL_SHAPES = [(16, 8, 3, 3), (8, 16, 3, 3), (8, 16, 2, 2), (40, 30, 1, 1), (12, 3, 3, 3), (16, 1, 5, 5),
                 (2, 3, 7, 7), (24, 12, 5), (12, 24, 4)]


def assert_same_rows(ours: dict, theirs: dict):
    for key in COUNT_KEYS:
        assert_rel(ours[key], theirs[key], 0, key)
    for key in FIT_KEYS:
        assert_rel(ours[key], theirs[key], REL, key)


def heavy_kernel(shape, seed=0) -> np.ndarray:
    """Student-t entries with a small positive mean: a heavy tail and traps, so alpha and the
    trap count are both exercised."""
    return np.random.default_rng(seed).standard_t(3, size=shape) / 10 + 0.01


@pytest.fixture(scope="module")
def ww():
    return import_weightwatcher()


# --------------------------------------------------------------------------- the slices


def weightwatcher_layer(ww, kernel: np.ndarray):
    """WeightWatcher's WWLayer of a 4-D state_dict weight, normalized as analyze() normalizes it."""
    from weightwatcher.constants import DEFAULT_PARAMS
    from weightwatcher.weightwatcher import PyStateDictLayer, WWLayer

    params = DEFAULT_PARAMS.copy()
    [framework_layer] = list(PyStateDictLayer.get_layer_iterator({"c.weight": kernel}))
    layer = WWLayer(framework_layer, layer_id=1, params=params)
    ww.WeightWatcher().apply_normalize_Wmats(layer, params)
    return layer


@pytest.mark.parametrize("shape", [s for s in KERNEL_SHAPES if len(s) == 4])
def test_kernel_slices_and_dims_are_weightwatchers(ww, shape):
    kernel = heavy_kernel(shape)
    layer = weightwatcher_layer(ww, kernel)
    assert str(layer.the_type) == "conv2d"
    assert kernels.weightwatcher_dims(shape) == (layer.N, layer.M, layer.rf)
    slices = kernels.kernel_slices(kernel)
    assert len(slices) == len(layer.Wmats)
    for ours, theirs in zip(slices, layer.Wmats):
        np.testing.assert_array_equal(ours, theirs)  # the same values, bit for bit, in the same order


def test_a_conv1d_kernel_is_the_conv2d_kernel_of_width_one():
    kernel = heavy_kernel((24, 12, 5))
    np.testing.assert_array_equal(kernels.kernel_slices(kernel), kernels.kernel_slices(kernel[..., None]))
    assert kernels.weightwatcher_dims((24, 12, 5)) == (24, 12, 5)


# --------------------------------------------------------------------------- whole layers


@pytest.mark.parametrize("shape", KERNEL_SHAPES)
def test_a_kernel_through_the_fast_engine_equals_weightwatcher(shape):
    kernel = heavy_kernel(shape, seed=len(shape))
    reference = htsr.analyze_layer(kernel, seed=7, fix_fingers="clip_xmax", engine="weightwatcher")
    fast = htsr.analyze_layer(kernel, seed=7, fix_fingers="clip_xmax", engine="fast")
    assert fast["fit_status"] == reference["fit_status"] == "ok"
    assert_same_rows(fast, reference)
    for key in ("evals", "rand_evals"):  # the same slices, the same shuffles: the same pooled spectra
        np.testing.assert_allclose(fast[key], reference[key], rtol=1e-10, atol=1e-13 * reference[key].max())
    # pooled: min(out, in) eigenvalues per kernel position; WeightWatcher's N, M in rows / cols
    assert fast["num_evals"] == kernels.num_pooled_evals(shape)
    assert (fast["rows"], fast["cols"]) == kernels.weightwatcher_dims(shape)[:2]


def test_trap_counts_pool_the_slices_and_can_exceed_m():
    """Every slice keeps the kernel's positive mean after its shuffle: one outlier per slice and
    replica (9 x 5), pooled: more traps than M (the count docs/own-models.md quotes)."""
    kernel = np.random.default_rng(3).standard_normal((16, 8, 3, 3)) / 10 + 0.05
    fast = htsr.analyze_layer(kernel, seed=1, engine="fast")
    assert fast["cols"] == 8 and len(fast["rand_evals"]) == 5 * 72
    assert fast["ww_num_traps"] == 28


# --------------------------------------------------------------------------- whole nets


class SmallConvNet(nn.Module):
    """Every layer type antigrok analyses, small: Conv2d (3 x 3, 1 x 1), Conv1d, Embedding, Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3)
        self.body = nn.Conv2d(16, 24, 3)
        self.pointwise = nn.Conv2d(24, 12, 1)
        self.temporal = nn.Conv1d(12, 20, 5)
        self.embed = nn.Embedding(60, 16)
        self.head = nn.Linear(24, 40)
        with torch.no_grad():  # heavy tails and a positive mean, as trained weights often have
            for parameter in self.parameters():
                if parameter.ndim >= 2:
                    parameter.copy_(torch.distributions.StudentT(3.0).sample(parameter.shape) / 10 + 0.01)


def weightwatcher_on_module(ww, model: nn.Module, layer: str, seed: int) -> dict:
    """WeightWatcher's own row for one named layer of an nn.Module (its float32 weights), with the
    global RNG seeded as antigrok seeds that layer: ``analyze(model=..., layers=[id])``."""
    ids = {name: index for index, (name, _) in enumerate(model.named_modules())}
    np.random.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        details = ww.WeightWatcher(model=model).analyze(layers=[ids[layer]], randomize=True,
                                                        fix_fingers="clip_xmax", plot=False, savefig=False)
    if details.empty:
        return {}
    row = details.iloc[0]
    return {"layer_type": str(row["layer_type"]), "rows": row["N"], "cols": row["M"], "num_evals": row["num_evals"],
            "alpha": row["alpha"], "raw_alpha": row["raw_alpha"], "num_fingers": row["num_fingers"],
            "xmin": row["xmin"], "xmax": row["xmax"], "pl_ks_distance": row["D"], "num_pl_spikes": row["num_pl_spikes"],
            "rand_sigma_mp": row["rand_sigma_mp"], "rand_lambda_plus": row["rand_bulk_max"],
            "max_rand_eval": row["max_rand_eval"], "log_norm": row["log_norm"],
            "log_spectral_norm": row["log_spectral_norm"], "stable_rank": row["stable_rank"],
            "ww_num_traps": row["rand_num_spikes"]}


@pytest.fixture(scope="module")
def conv_net_table():
    return htsr.analyze_state_dict(SmallConvNet().state_dict(), seed=0)


@pytest.mark.parametrize("layer", ["stem", "body", "pointwise", "embed", "head"])
def test_a_conv_net_equals_weightwatcher_given_the_module(ww, conv_net_table, layer):
    """WeightWatcher on the nn.Module itself (as a user calls it), layer by layer, against
    analyze_state_dict of its state_dict: alpha, xmin, sigma, traps to 1e-12."""
    theirs = weightwatcher_on_module(ww, SmallConvNet(), layer, layer_seed(0, 0, layer))
    ours = conv_net_table.set_index("layer").loc[layer].to_dict()
    assert theirs["layer_type"] == {"embed": "embedding", "head": "dense"}.get(layer, "conv2d")
    assert_same_rows(ours, theirs)
    assert ours["num_traps"] == theirs["ww_num_traps"]  # antigrok.spectra.traps' recount: WeightWatcher's


def test_weightwatcher_given_the_module_skips_a_narrow_conv1d(ww, conv_net_table):
    """What docs/own-models.md says WeightWatcher does with Conv1d: min(out, in, k) < 10, no row;
    antigrok analyses it as the Conv2d kernel of width 1."""
    assert weightwatcher_on_module(ww, SmallConvNet(), "temporal", 0) == {}
    temporal = conv_net_table.set_index("layer").loc["temporal"]
    as_conv2d = htsr.analyze_layer(SmallConvNet().temporal.weight.detach().double().numpy()[..., None],
                                   seed=layer_seed(0, 0, "temporal"), engine="weightwatcher")
    assert_same_rows(temporal.to_dict(), as_conv2d)


def test_the_command_and_the_monitor_give_the_state_dict_rows(tmp_path, conv_net_table):
    from safetensors.torch import save_file

    from antigrok.monitor import analyze_snapshot, snapshot_weights

    model = SmallConvNet()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "net.safetensors")
    torch.save(model.state_dict(), tmp_path / "net.pt")
    expected = conv_net_table.set_index("layer")
    for path in ("net.safetensors", "net.pt"):
        out = tmp_path / f"{path}.csv"
        assert cli.main(["analyze", str(tmp_path / path), "-o", str(out), "-q"]) == 0
        import pandas as pd

        table = pd.read_csv(out).set_index("layer")
        assert sorted(table.index) == sorted(expected.index)
        for layer in expected.index:
            assert_same_rows(table.loc[layer].to_dict(), expected.loc[layer].to_dict())
            assert table.loc[layer, "num_traps"] == expected.loc[layer, "num_traps"]
    monitored = analyze_snapshot(snapshot_weights(model), seed=0, step=0).set_index("layer")
    for layer in expected.index:
        assert_same_rows(monitored.loc[layer].to_dict(), expected.loc[layer].to_dict())
