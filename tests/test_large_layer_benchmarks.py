"""The two benchmarks of issue 13 run at a tiny size, so that neither script can rot:
benchmarks/large_layers.py (WeightWatcher against the fast engine) and
benchmarks/own_model_memory.py (peak RSS of ``antigrok analyze`` on sharded folders)."""

import importlib.util
import json

import pytest

from conftest import REPO


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_large_layers_compares_the_engines_at_a_tiny_size(capsys):
    benchmark = load_script("large_layers")
    report = benchmark.main(["--shapes", "64x96"])
    out = capsys.readouterr().out
    entry = report["64x96"]
    assert set(entry["engines"]) == {"weightwatcher", "fast"}
    for _, timing in entry["engines"].values():
        assert timing["wall"] > 0 and timing["cpu"] >= 0
    assert entry["differences"]["alpha"] < 1e-9
    assert entry["differences"]["xmin"] < 1e-9
    assert entry["differences"]["rand_sigma_mp"] < 1e-6
    assert entry["traps"][0] == entry["traps"][1]
    assert entry["traps"][0] > 0, "the mean shift of the synthetic layer gives Correlation Traps"
    assert list(entry["steps"]) == ["eigenvalues of W (esd_batch)", "  of which: Gram matrix product",
                                    "  of which: eigvalsh", "shuffle (WeightWatcher's draws)",
                                    "eigenvalues of W_rand", "rest: power law, MP fit, traps, KS"]
    assert "side by side" in out and "64x96 | weightwatcher" in out


def test_large_layers_projects_gpt_oss_from_the_expert_shape(monkeypatch, capsys):
    benchmark = load_script("large_layers")
    monkeypatch.setattr(benchmark, "EXPERT_SHAPE", "40x40")
    report = benchmark.main(["--shapes", "40x40", "--engines", "fast", "--breakdown", "none", "--node-cores", "10"])
    seconds = report["40x40"]["engines"]["fast"][1]["cpu"]
    projection = report["projection"]["gpt-oss-120b"]["fast"]
    assert projection["one core"] == pytest.approx(36 * 128 * 3 * seconds)
    assert projection["10 nodes x 10 cores"] == pytest.approx(36 * 128 * 3 * seconds / 100)
    assert report["projection"]["gpt-oss-20b"]["fast"]["one core"] == pytest.approx(24 * 32 * 3 * seconds)
    assert "projected time of the expert matrices" in capsys.readouterr().out


def test_large_layers_breakdown_only_runs_no_engine(capsys):
    benchmark = load_script("large_layers")
    report = benchmark.main(["--shapes", "32x48", "--breakdown", "only"])
    assert report["32x48"]["engines"] == {}
    assert "sum of the steps (CPU)" in capsys.readouterr().out


def test_synthetic_layer_is_fixed_by_its_seed():
    benchmark = load_script("large_layers")
    first, again, other = (benchmark.synthetic_layer(8, 12, seed) for seed in (0, 0, 1))
    assert first.shape == (8, 12)
    assert (first == again).all() and not (first == other).all()


def test_own_model_memory_writes_index_and_shards(tmp_path):
    from antigrok.formats.loading import open_model

    benchmark = load_script("own_model_memory")
    folder = tmp_path / "model"
    size = benchmark.write_model(folder, 5, (16, 24), "bfloat16")
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert len(index) == 10 and set(index.values()) == set(shards)
    assert size == sum(p.stat().st_size for p in folder.iterdir())
    tensors = {t.name: t for source in open_model(folder) for t in source.tensors}
    assert tensors["model.layers.4.mlp.weight"].shape == (16, 24)
    assert tensors["model.layers.4.mlp.weight"].dtype == "bfloat16"
    assert tensors["model.layers.4.norm.weight"].shape == (24,)


def test_own_model_memory_is_bounded_by_one_tensor_not_the_model(capsys):
    benchmark = load_script("own_model_memory")
    # 12 and 24 layers of 8192 x 64 (4 MB each in float64), several shards each: two child
    # processes, a few s of CPU each
    rows = benchmark.main(["--num-layers", "12,24", "--shape", "8192x64"])
    assert [row["layers"] for row in rows] == [12, 24]  # main checks that htsr.csv has that many rows
    assert rows[1]["float64_mb"] == pytest.approx(24 * 8192 * 64 * 8 / 2**20)
    # reading the whole model would add 12 x 4 MB (48 MB) of float64 and half that of float32;
    # one tensor at a time adds nothing that grows with the layer count. (From 1 layer to 12 the peak
    # does grow, +44 MB measured on 2026-12-03, float32, a one-off rise; from 12 to 24: +3 MB.)
    growth = rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    assert growth < 0.5 * (rows[1]["float64_mb"] - rows[0]["float64_mb"]), rows
    assert "peak RSS MB" in capsys.readouterr().out
