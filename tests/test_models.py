"""Backbones, heads and the ImageNet-weights path (from a seeded local torch cache, no network).

The weights are fetched by utils.data.weights (the data side) and handed to the builders as a state dict.
"""
import hashlib
import io

import pytest
import torch
from torchvision.models import resnet18

from models import PretrainModel, ProjectionHead, build_backbone, build_model, build_probe_head
from models.resnet import imagenet_classifier
from utils.data.weights import imagenet_weights_path, load_imagenet_state_dict
from utils.errors import DataMissingError


@pytest.mark.parametrize("stem,size", [("cifar", 32), ("cifar", 64), ("imagenet", 64), ("imagenet", 224)])
def test_backbone_shapes(stem, size):
    net = build_backbone(stem).eval()
    with torch.no_grad():
        h = net(torch.randn(2, 3, size, size))
    assert h.shape == (2, 512)
    assert net.feature_dim == 512


def test_cifar_stem_keeps_resolution():
    net = build_backbone("cifar")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    # 32 px in: layer4 sees 4x4 maps (ImageNet stem would give 1x1).
    feats = {}
    net.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    net(torch.randn(1, 3, 32, 32))
    assert feats["x"].shape[-2:] == (4, 4)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(11.17e6, rel=0.01)


@pytest.mark.parametrize("train_type", ["simclr", "supervised"])
def test_every_parameter_gets_a_gradient(train_type):
    spec = {"train_type": train_type, "stem": "cifar", "num_classes": 10, "proj_hidden_dim": 64, "proj_dim": 16}
    model = build_model(spec)
    h, out = model(torch.randn(4, 3, 32, 32))
    assert h.shape == (4, 512)
    assert out.shape == ((4, 16) if train_type == "simclr" else (4, 10))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_probe_heads_are_linear():
    for layers in (1, 2):
        head = build_probe_head(512, 100, layers=layers)
        x, y = torch.randn(3, 512), torch.randn(3, 512)
        # Linear map (affine): f(x + y) - f(0) == f(x) - f(0) + f(y) - f(0)
        zero = head(torch.zeros(1, 512))
        assert torch.allclose(head(x + y) - zero, (head(x) - zero) + (head(y) - zero), atol=1e-4)
        assert head(x).shape == (3, 100)
    with pytest.raises(ValueError):
        build_probe_head(512, 10, layers=3)


def test_projection_head_shape():
    model = PretrainModel(build_backbone("cifar"), ProjectionHead(512, 256, 64))
    _, z = model(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 64)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_imagenet_weights_from_seeded_cache(torch_home):
    reference = resnet18(weights=None)
    path = imagenet_weights_path()
    assert str(path).startswith(str(torch_home))
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    net = build_backbone("imagenet", weights=load_imagenet_state_dict())
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name
    fc = imagenet_classifier(load_imagenet_state_dict())
    assert torch.equal(fc.weight, reference.fc.weight)


def test_missing_imagenet_weights_names_the_path(torch_home):
    with pytest.raises(DataMissingError) as err:
        load_imagenet_state_dict()
    message = str(err.value)
    assert str(imagenet_weights_path()) in message
    assert "\n" not in message


def test_pretrained_requires_imagenet_stem():
    with pytest.raises(ValueError):
        build_backbone("cifar", weights=resnet18(weights=None).state_dict())


def _weights_blob() -> bytes:
    buf = io.BytesIO()
    torch.save(resnet18(weights=None).state_dict(), buf)
    return buf.getvalue()


def test_imagenet_weights_fetched_by_our_downloader_and_sha_checked(torch_home):
    from test_download import LocalServer

    blob = _weights_blob()
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    with LocalServer() as server:
        url = server.add(f"resnet18-{prefix}.pth", blob)
        state = load_imagenet_state_dict(url)
        assert imagenet_weights_path(url).read_bytes() == blob  # cached where torchvision looks
        assert set(state) == set(resnet18(weights=None).state_dict())

        bad = server.add("resnet18-00000000.pth", blob)  # name promises another sha256
        with pytest.raises(DataMissingError, match="sha256"):
            load_imagenet_state_dict(bad)
        assert not imagenet_weights_path(bad).exists()


def test_projection_head_with_and_without_batchnorm():
    plain = ProjectionHead(512, 1024, 128, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())
    assert plain.net[0].bias is not None and plain(torch.randn(4, 512)).shape == (4, 128)
    with_bn = ProjectionHead(512, 512, 128)
    assert isinstance(with_bn.net[1], torch.nn.BatchNorm1d) and with_bn.net[0].bias is None
    # Checkpoints written before proj_bn existed rebuild with the BatchNorm head they were trained with.
    old = build_model({"train_type": "simclr", "stem": "cifar", "proj_hidden_dim": 512, "proj_dim": 128})
    new = build_model({"train_type": "simclr", "stem": "cifar", "proj_hidden_dim": 1024, "proj_dim": 128,
                       "proj_bn": False})
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in old.head.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in new.head.modules())
