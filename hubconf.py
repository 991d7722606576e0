"""torch.hub entry points: a backbone trained by this repository, loaded from its checkpoint.

    backbone = torch.hub.load("path/to/this/repo", "resnet18", source="local", checkpoint="run/final.pth")
    preprocess = torch.hub.load("path/to/this/repo", "preprocess", source="local", checkpoint="run/final.pth")

Both come from models.load_backbone (see models/pretrained.py and the README's "Use a trained
backbone"): a frozen, eval-mode torchvision ResNet-18 (x (B, 3, S, S) -> h (B, 512)) and
test.py's preprocessing at the checkpoint's image size and mean/std.
"""
dependencies = ["torch", "torchvision"]

from models.pretrained import load_backbone as _load_backbone  # noqa: E402


def resnet18(checkpoint: str, device: str = "cpu"):
    """The checkpoint's ResNet-18 backbone (fc = Identity, eval mode, frozen), as models.load_backbone gives it."""
    return _load_backbone(checkpoint, device=device)[0]


def preprocess(checkpoint: str):
    """The checkpoint's preprocessing (PIL image or uint8 tensor -> normalised float tensor), as test.py applies it."""
    return _load_backbone(checkpoint)[1]
