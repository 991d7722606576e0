"""models.load_backbone, the torch.hub entry and the README's "Use a trained backbone" snippet.

Tiny checkpoints of each kind come from train.main (SimCLR and supervised, one epoch at 16 px on
synthetic data; torchvision ImageNet weights with --epochs 0 --pretrained true from a seeded
$TORCH_HOME). The features are checked against the ones test.py itself computes for the same
image files (test.main on a folder dataset, its feature pass recorded).

    python -m pytest tests/test_load_backbone.py -q
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import ResNet, resnet18, resnet34

import test as test_script
import train
import utils.eval.probe
from models import CheckpointError, load_backbone
from utils.checkpoint import FORMAT, load_checkpoint
from utils.data.folder import list_folder
from utils.data.weights import imagenet_weights_path
from utils.errors import UserError
from utils.eval.features import extract_features
from utils.augment import batch_eval_transform

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "synthetic", "--data_scale", "0.05", "--batch_size", "50", "--image_size", "16",
        "--device", "cpu", "--workers", "0", "--quiet"]
KINDS = ("simclr", "supervised", "imagenet")
# Image files of several shapes, none at a checkpoint's size: resizing and cropping are exercised.
IMAGE_SIZES = ((20, 28), (40, 24), (16, 16), (33, 50), (64, 64), (25, 19))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    train.main([*TINY, "--epochs", "1", "--run_dir", str(root / "simclr")])
    train.main([*TINY, "--epochs", "1", "--train_type", "supervised", "--run_dir", str(root / "supervised")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        path = imagenet_weights_path()
        path.parent.mkdir(parents=True)
        torch.manual_seed(1)
        torch.save(resnet18(weights=None).state_dict(), path)  # stands in for torchvision's file
        train.main(["--train_type", "supervised", "--dataset", "imagenet", "--epochs", "0", "--pretrained", "true",
                    "--device", "cpu", "--quiet", "--run_dir", str(root / "imagenet")])
    return {kind: root / kind / "final.pth" for kind in KINDS}


def write_pngs(folder: Path, sizes=IMAGE_SIZES, seed: int = 0) -> list[Path]:
    """Random RGB PNGs of the given (width, height), named so that sorted order is creation order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def image_folder(root: Path, test_images: list[Path]) -> Path:
    """A folder dataset for test.py: `test_images` as the test split (one class), small train split."""
    data = root / "data"
    for i, cls in enumerate(("a", "b")):
        write_pngs(data / "train" / cls, sizes=((18, 18), (30, 20)), seed=10 + i)
    (data / "test" / "a").mkdir(parents=True)
    for path in test_images:
        shutil.copy(path, data / "test" / "a" / path.name)
    return data


def features_from_test_py(checkpoint: Path, data_dir: Path, run_dir: Path, monkeypatch) -> tuple[torch.Tensor, list[Path]]:
    """The test-split features test.main computes in its feature pass, and the files they belong to."""
    seen = {}
    real = utils.eval.probe.extract_features

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        seen[kwargs.get("progress")] = out.clone()
        return out

    monkeypatch.setattr(utils.eval.probe, "extract_features", record)
    test_script.main(["--model_path", str(checkpoint), "--dataset", "folder", "--data_dir", str(data_dir),
                      "--test_num_epochs", "1", "--device", "cpu", "--run_dir", str(run_dir), "--quiet"])
    files, _, _ = list_folder(data_dir, "test")
    return seen["test features"], files


@pytest.mark.parametrize("kind", KINDS)
def test_backbone_is_the_checkpoints_and_frozen(checkpoints, kind):
    ckpt = load_checkpoint(checkpoints[kind])
    backbone, preprocess = load_backbone(checkpoints[kind], device="cpu")
    assert type(backbone) is ResNet and isinstance(backbone.fc, torch.nn.Identity)
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    state = backbone.state_dict()
    assert set(state) == set(ckpt["backbone"])
    for name, tensor in ckpt["backbone"].items():
        assert torch.equal(state[name], tensor), name
    stem = ckpt["model"]["stem"]
    assert stem == ("imagenet" if kind == "imagenet" else "cifar")
    assert backbone.conv1.kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))
    size = ckpt["data"]["image_size"]
    assert size == (224 if kind == "imagenet" else 16)
    x = preprocess(Image.new("RGB", (37, 23), (255, 0, 0)))
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(ckpt["data"]["mean"])) / torch.tensor(ckpt["data"]["std"])
    assert torch.allclose(x[:, size // 2, size // 2], red)
    assert backbone(x.unsqueeze(0)).shape == (1, 512)


@pytest.mark.parametrize("kind", KINDS)
def test_features_equal_test_py_for_the_same_image_files(checkpoints, kind, tmp_path, monkeypatch):
    pngs = write_pngs(tmp_path / "pngs")
    data = image_folder(tmp_path, pngs)
    expected, files = features_from_test_py(checkpoints[kind], data, tmp_path / "eval", monkeypatch)
    assert [f.name for f in files] == [p.name for p in pngs]
    backbone, preprocess = load_backbone(checkpoints[kind])
    h = backbone(torch.stack([preprocess(Image.open(p)) for p in pngs]))
    assert h.shape == (len(pngs), 512)
    assert torch.allclose(h, expected, rtol=1e-4, atol=1e-4), (h - expected).abs().max()
    assert expected.std(0).mean() > 1e-3  # the images give different features: the check has teeth


def test_uint8_tensors_are_resized_as_test_py_resizes_dataset_arrays(checkpoints):
    """CIFAR-like arrays at another size than the checkpoint's: test.py resizes them on the batch."""
    ckpt = load_checkpoint(checkpoints["simclr"])
    size, mean, std = ckpt["data"]["image_size"], ckpt["data"]["mean"], ckpt["data"]["std"]
    backbone, preprocess = load_backbone(ckpt)
    images = torch.randint(0, 256, (5, 24, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = images.permute(0, 3, 1, 2)
    assert torch.equal(preprocess(batch), batch_eval_transform(batch, size, mean, std))
    one_by_one = torch.stack([preprocess(im) for im in batch])
    assert torch.equal(one_by_one, preprocess(batch))
    expected = extract_features(backbone, images, size, mean, std, torch.device("cpu"))
    assert torch.allclose(backbone(one_by_one), expected, rtol=1e-4, atol=1e-4)
    gray = preprocess(batch[:1, :1])
    assert torch.equal(gray, preprocess(batch[:1, :1].expand(1, 3, 24, 24)))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(batch.float())


def _bad_files(tmp_path: Path, checkpoints) -> dict[str, Path]:
    marker = tmp_path / "pwned"

    class RunsAShellCommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files = {"missing": tmp_path / "nope.pth", "directory": tmp_path}
    (tmp_path / "empty.pth").write_bytes(b"")
    files["empty"] = tmp_path / "empty.pth"
    torch.save({"format": FORMAT, "x": RunsAShellCommand()}, tmp_path / "evil.pth")
    files["evil"] = tmp_path / "evil.pth"
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "bare.pth")
    files["bare"] = tmp_path / "bare.pth"
    blob = checkpoints["simclr"].read_bytes()
    (tmp_path / "truncated.pth").write_bytes(blob[: len(blob) // 2])
    files["truncated"] = tmp_path / "truncated.pth"
    ckpt = load_checkpoint(checkpoints["simclr"])
    ckpt["backbone"] = resnet34(weights=None).state_dict()
    torch.save(ckpt, tmp_path / "resnet34.pth")
    files["other architecture"] = tmp_path / "resnet34.pth"
    ckpt = load_checkpoint(checkpoints["simclr"])
    del ckpt["data"]
    torch.save(ckpt, tmp_path / "nodata.pth")
    files["no data"] = tmp_path / "nodata.pth"
    return files


def test_bad_files_give_one_line_errors_like_the_scripts(tmp_path, checkpoints):
    files = _bad_files(tmp_path, checkpoints)
    for kind, path in files.items():
        with pytest.raises(CheckpointError) as info:
            load_backbone(path)
        message = str(info.value)
        assert isinstance(info.value, ValueError) and "\n" not in message and str(path) in message, (kind, message)
        if kind in ("other architecture", "no data"):
            continue  # the file itself reads fine; what is in it does not fit
        with pytest.raises(UserError) as script_error:
            load_checkpoint(path)
        assert str(script_error.value) == message, kind
    assert "code execution" in str(pytest.raises(CheckpointError, load_backbone, files["evil"]).value)
    assert not (tmp_path / "pwned").exists()
    assert "backbone weights do not match" in str(pytest.raises(CheckpointError, load_backbone,
                                                                files["other architecture"]).value)


def test_torch_hub_local_entry_gives_the_same_backbone(checkpoints):
    path = str(checkpoints["supervised"])
    hub = torch.hub.load(str(ROOT), "resnet18", source="local", checkpoint=path)
    hub_preprocess = torch.hub.load(str(ROOT), "preprocess", source="local", checkpoint=path)
    backbone, preprocess = load_backbone(path)
    assert type(hub) is ResNet and not hub.training and isinstance(hub.fc, torch.nn.Identity)
    assert hub.state_dict().keys() == backbone.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(hub.state_dict().values(), backbone.state_dict().values()))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 22, 3), dtype=np.uint8))
    x = hub_preprocess(image)
    assert torch.equal(x, preprocess(image))
    assert torch.equal(hub(x.unsqueeze(0)), backbone(x.unsqueeze(0)))


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use a trained backbone\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_as_printed_and_matches_test_py(checkpoints, tmp_path, monkeypatch):
    code = readme_snippet()
    assert len(code.strip().splitlines()) == 5 and "load_backbone(" in code
    (tmp_path / "checkpoints" / "mine").mkdir(parents=True)
    shutil.copy(checkpoints["simclr"], tmp_path / "checkpoints" / "mine" / "final.pth")
    pngs = write_pngs(tmp_path / "my_images", seed=3)
    data = image_folder(tmp_path / "for-test-py", pngs)
    expected, _ = features_from_test_py(checkpoints["simclr"], data, tmp_path / "eval", monkeypatch)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(ROOT / "README.md"), "exec"), namespace)
    h = namespace["h"]
    assert h.shape == (len(pngs), 512) and not h.requires_grad
    assert torch.allclose(h, expected, rtol=1e-4, atol=1e-4), (h - expected).abs().max()


def test_one_line_from_the_issue_prints_the_feature_shape(checkpoints, tmp_path):
    """`python -c` from another folder, with the repository on PYTHONPATH: (1, 512) for a synthetic run R."""
    shutil.copytree(checkpoints["simclr"].parent, tmp_path / "R")
    code = ("from models import load_backbone; b, p = load_backbone('R/final.pth'); "
            "print(b(p(__import__('PIL.Image', fromlist=['Image']).new('RGB', (32, 32))).unsqueeze(0)).shape)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch.Size([1, 512])"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            names.add("models")  # a relative import stays inside the package
    return names


def test_models_package_imports_only_torch_and_torchvision():
    """models/ is a leaf: torch, torchvision (and PIL, torchvision's image library) and the standard library."""
    allowed = {"torch", "torchvision", "PIL", "models", "__future__", *sys.stdlib_module_names}
    files = sorted((ROOT / "models").rglob("*.py")) + [ROOT / "hubconf.py"]
    assert len(files) >= 6
    for path in files:
        imported = _imported_modules(path)
        assert "utils" not in imported, path
        assert imported <= allowed, (path, imported - allowed)
    # and the check itself sees an import of utils where there is one
    assert "utils" in _imported_modules(ROOT / "train.py")
