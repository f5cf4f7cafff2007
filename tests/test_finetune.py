"""Fine-tuning: `bench pretrain` backbones with provenance, full vs linear-probe training (what is
frozen), RobustBench-format checkpoints loaded without unpickling, and clear errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import make_images, run_cli
from safetensors import safe_open

from benchmark.data import stratified_subset
from benchmark.models import build_model
from benchmark.pretrain import indices_digest, pretrain_indices, read_backbone
from benchmark.protocol import resolve_protocol
from benchmark.train import train_model
from defenses.base import TrainContext, build_defense
from defenses.finetune import robustbench_to_bench


class NotAWeight:
    """A pickled object that a weights-only load must refuse."""


@pytest.fixture
def backbone(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    out = tmp_path / "bb.safetensors"
    code, stdout, err = run_cli(["pretrain", "--preset", "smoke", "--epochs", "1", "--max-images", "256",
                                 "--out", str(out)], capsys)
    assert code == 0, err
    assert "split holdout" in " ".join(stdout.split()) and out.is_file()
    return out


def test_pretrain_metadata_and_holdout_is_disjoint_from_the_victim_subset(backbone: Path) -> None:
    with safe_open(str(backbone), framework="pt") as f:
        meta = json.loads(f.metadata()["bench"])
        keys = list(f.keys())
    assert meta["model"] == "small-cnn" and meta["dataset"] == "cifar10" and meta["dataset_source"] == "cifar10-jpeg"
    assert meta["split"] == "holdout" and meta["train_images"] == 256 and meta["victim_train_subset"] == 512
    assert meta["epochs"] == 1 and "linear.weight" in keys and len(meta["dataset_digest"]) == 16
    _, _, seen = read_backbone(backbone)
    victim = stratified_subset(torch.arange(50000) % 10, 512, 0)  # not the real labels: only the shape matters
    assert seen is not None and len(seen) == 256 and indices_digest(seen) == meta["train_indices_sha256"]
    y = torch.arange(1000) % 10
    inside = stratified_subset(y, 100, 0)
    held = pretrain_indices(1000, inside, "holdout")
    assert len(held) == 900 and not torch.isin(held, inside).any()  # exactly the images victims never see
    assert torch.equal(pretrain_indices(1000, inside, "train"), inside) and len(pretrain_indices(1000, inside, "all")) == 1000
    assert len(victim) == 512


def _train_once(mode: str, backbone: Path) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    stack = build_defense("finetune", {"backbone": str(backbone), "mode": mode})
    proto = resolve_protocol("smoke", {"epochs": 1, "batch_size": 32})
    ctx = TrainContext(device=torch.device("cpu"), num_classes=4, in_channels=3, image_size=(16, 16),
                       protocol=proto, seed=0, generator=torch.Generator().manual_seed(0))
    model = stack.build_model("small-cnn", 4, 3, ctx)
    pre, _, _ = read_backbone(backbone)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the backbone weights were loaded (all but the fresh 4-way head)
    assert all(torch.equal(before[k], pre[k]) for k in pre if not k.startswith("linear."))
    assert before["linear.weight"].shape == (4, pre["linear.weight"].shape[1])
    data = make_images(n=96, num_classes=4)
    train_model(model, data, data, proto, stack, ctx)
    return model, before, model.state_dict()


def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_statistics(backbone: Path) -> None:
    _, before, after = _train_once("linear", backbone)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"linear.weight", "linear.bias"}  # running_mean/var and all backbone weights intact


def test_full_finetune_trains_the_backbone(backbone: Path) -> None:
    _, before, after = _train_once("full", backbone)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "linear.weight" in changed
    assert any(k.startswith("features") and k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)


def _robustbench_file(model_dir: Path, state: dict) -> Path:
    """``state`` saved where robustbench.utils.load_model looks: MODEL_DIR/cifar10/Linf/NAME.pt."""
    path = model_dir / "cifar10" / "Linf" / "Sehwag2021Proxy_R18.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def robustbench_resnet18() -> nn.Module:
    """RobustBench's own ResNet18 class (robustbench/model_zoo/architectures/resnet.py, the model of
    Sehwag2021Proxy_R18), read from its file: the robustbench 1.1.1 package does not import (finetune.py)."""
    spec = importlib.util.find_spec("robustbench")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("robustbench is not installed (pip install -e '.[dev]')")
    path = Path(spec.submodule_search_locations[0]) / "model_zoo" / "architectures" / "resnet.py"
    file_spec = importlib.util.spec_from_file_location("robustbench_resnet", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    torch.manual_seed(1)
    return module.ResNet18()


@pytest.mark.parametrize("layout", ["state_dict+module", "bare"])
def test_robustbench_checkpoint_loads_weights_only(layout: str, tmp_path: Path) -> None:
    """A checkpoint of RobustBench's ResNet18, in either layout load_model reads, gives the same network."""
    reference = robustbench_resnet18()
    state = reference.state_dict()
    _robustbench_file(tmp_path / "models", {"state_dict": {f"module.{k}": v for k, v in state.items()}}
                      if layout == "state_dict+module" else state)
    stack = build_defense("finetune", {"backbone": "robustbench:Sehwag2021Proxy_R18",
                                       "model_dir": str(tmp_path / "models"), "mode": "linear"})
    ctx = TrainContext(device=torch.device("cpu"), num_classes=10, in_channels=3, image_size=(32, 32))
    model = stack.build_model("resnet18", 10, 3, ctx)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in robustbench_to_bench(state).items() if not k.startswith("linear."))
    assert not torch.equal(model.linear.weight, reference.linear.weight)  # a fresh head
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["linear.weight", "linear.bias"]
    model.linear = reference.linear  # with RobustBench's head back, it is RobustBench's network
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference.eval()(x), atol=1e-5)
    src = stack.describe_source()["finetune"]
    assert src["backbone"] == "robustbench:Sehwag2021Proxy_R18" and src["mode"] == "linear" and len(src["sha256"]) == 16


def test_pickled_objects_in_a_checkpoint_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would unpickle a torch.load without weights_only
    _robustbench_file(tmp_path / "models", {"state_dict": {"w": torch.zeros(1)}, "extra": NotAWeight()})
    stack = build_defense("finetune", {"backbone": "robustbench:Sehwag2021Proxy_R18", "model_dir": str(tmp_path / "models")})
    ctx = TrainContext(device=torch.device("cpu"), num_classes=10, in_channels=3, image_size=(32, 32))
    from benchmark.errors import BenchError

    with pytest.raises(BenchError, match="weights_only=True"):
        stack.build_model("resnet18", 10, 3, ctx)


@pytest.mark.parametrize("params,message", [
    (["backbone=/nonexistent/bb.safetensors"], "backbone file not found: /nonexistent/bb.safetensors"),
    (["backbone=robustbench:Sehwag2021Proxy_R18", "model_dir=/nowhere"], "get it from https://github.com/RobustBench"),
    (["backbone=robustbench:Nope"], "unknown robustbench backbone 'Nope'"),
    (["backbone=bb.pt"], "must be a .safetensors file or robustbench:NAME"),
    (["backbone=x.safetensors", "mode=probe"], "'mode'"),
])
def test_bad_backbones_are_one_line_errors(params: list[str], message: str, bench_env: dict,
                                           capsys: pytest.CaptureFixture) -> None:
    args = ["run", "--preset", "smoke", "--poison", "cuda", "--defense", "finetune", "--no-baseline"]
    for p in params:
        args += ["--defense-param", p]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(bench_env["results"].glob("*.json"))


def test_finetune_run_end_to_end_records_the_backbone(backbone: Path, bench_env: dict,
                                                      capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["run", "--preset", "smoke", "--poison", "cuda", "--defense", "finetune", "--no-baseline",
                            "--defense-param", f"backbone={backbone}", "--defense-param", "mode=linear",
                            "--protocol-param", "epochs=1"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["run", "--preset", "paper", "--poison", "cuda", "--defense", "finetune", "--no-baseline",
                            "--device", "cpu"], capsys)
    assert code == 2 and "no clean cifar10 training images are disjoint" in err and "--dataset cifar100" in err
    (path,) = bench_env["results"].glob("*.json")
    rec = json.loads(path.read_text())
    src = rec["defense_source"]["finetune"]
    assert src["mode"] == "linear" and src["pretrained_on"]["split"] == "holdout"
    assert src["pretrained_on"]["train_images"] == 256 and src["overlap"]["overlapping_images"] == 0
    assert rec["defense_info"]["tier"] == "extra-clean-data" and rec["defense_info"]["family"] == "transfer"
    # a backbone of another architecture is refused up front with a hint
    code, _, err = run_cli(["run", "--preset", "smoke", "--poison", "cuda", "--defense", "finetune", "--no-baseline",
                            "--model", "resnet18", "--defense-param", f"backbone={backbone}"], capsys)
    assert code == 2 and "pass --model small-cnn" in err


# ----------------------------------------------------------------------- default backbone, leakage guard

def _write_folder(root: Path, per_class: int, classes: int = 4, size: int = 16, seed: int = 0) -> None:
    """An image folder whose classes differ by mean colour: learnable in a few steps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(rng.normal(40 + 55 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    _write_folder(root, per_class=80)
    return root


def _ft_run(folder: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str, str]:
    return run_cli(["run", "--dataset", f"imagefolder:{folder}", "--preset", "smoke", "--no-baseline",
                    "--protocol-param", "train_subset=128", "--protocol-param", "test_subset=0",
                    "--batch-size", "16", "--epochs", "1", "--defense", "finetune", *extra], capsys)


def test_default_backbone_is_made_once_on_held_out_images_and_keeps_its_accuracy(
        folder: Path, bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _ft_run(folder, capsys)
    assert code == 0, err
    assert "pretraining the default small-cnn backbone on 192 held-out clean" in " ".join(out.split())
    (path,) = bench_env["results"].glob("*.json")
    rec = json.loads(path.read_text())
    src = rec["defense_source"]["finetune"]
    assert src["backbone"] == "default" and src["pretrained_on"]["split"] == "holdout"
    assert src["pretrained_on"]["train_images"] == 192 and src["overlap"]["overlapping_images"] == 0
    assert src["optimisation"] == {"lr": pytest.approx(0.005), "schedule": "cosine", "epochs": 1}
    assert rec["defense_info"]["tier"] == "extra-clean-data"
    # the backbone's images and the victim's are disjoint
    bb = Path(src["file"])
    assert bb.parent == bench_env["cache"] / "backbones", bb
    _, meta, seen = read_backbone(bb)
    from benchmark.data import load_dataset, victim_indices

    data = load_dataset(f"imagefolder:{folder}", folder, bench_env["cache"])
    victim = victim_indices(data.train, resolve_protocol("smoke", {"train_subset": 128}))
    assert not torch.isin(victim, seen).any() and len(seen) + len(victim) == len(data.train)
    # fine-tuning one epoch on clean images (the no-poison run) keeps the pretrained accuracy
    code, out, err = _ft_run(folder, capsys, "--poison", "none", "--defense-param", "mode=full")
    assert code == 0, err and "pretraining" not in out  # cached: made once
    clean = next(json.loads(p.read_text()) for p in bench_env["results"].glob("*none-finetune*.json"))
    assert clean["metrics"]["per_epoch"][0]["test_acc"] >= meta["clean_test_acc"] - 5


def test_leakage_guard_refuses_an_overlapping_backbone_and_accepts_a_disjoint_one(
        folder: Path, bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    made = {}
    for split in ("train", "holdout"):
        made[split] = tmp_path / f"{split}.safetensors"
        code, _, err = run_cli(["pretrain", "--dataset", f"imagefolder:{folder}", "--preset", "smoke", "--epochs", "1",
                                "--protocol-param", "train_subset=128", "--split", split, "--out", str(made[split])], capsys)
        assert code == 0, err
    code, _, err = _ft_run(folder, capsys, "--poison", "cuda", "--defense-param", f"backbone={made['train']}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "saw clean versions of 128 of the victim's 128" in err
    assert not list(bench_env["results"].glob("*.json"))  # refused before any work
    code, _, err = _ft_run(folder, capsys, "--poison", "cuda", "--defense-param", f"backbone={made['train']}",
                           "--defense-param", "allow_overlap=true")
    assert code == 0, err
    (rec,) = [json.loads(p.read_text()) for p in bench_env["results"].glob("*.json")]
    assert rec["defense_info"]["tier"] == "overlapping-data"
    code, _, err = _ft_run(folder, capsys, "--poison", "cuda", "--defense-param", f"backbone={made['holdout']}")
    assert code == 0, err
    tiers = sorted(json.loads(p.read_text())["defense_info"]["tier"] for p in bench_env["results"].glob("*.json"))
    assert tiers == ["extra-clean-data", "overlapping-data"]


def test_a_robustbench_cifar10_backbone_counts_as_overlap(tmp_path: Path, bench_env: dict,
                                                         capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(1)
    _robustbench_file(tmp_path / "models", {"state_dict": build_model("resnet18", 10, 3).state_dict()})
    code, _, err = run_cli(["run", "--preset", "smoke", "--poison", "cuda", "--defense", "finetune", "--no-baseline",
                            "--model", "resnet18", "--defense-param", "backbone=robustbench:Sehwag2021Proxy_R18",
                            "--defense-param", f"model_dir={tmp_path / 'models'}"], capsys)
    assert code == 2 and "whole CIFAR-10 training split" in err and "allow_overlap=true" in err
