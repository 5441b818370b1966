"""`swin_t`: timm's Swin-T (swin_tiny_patch4_window7_224) on grayscale patches.

Grayscale is replicated to three channels and normalised with ImageNet statistics, the way the
ImageNet weights were trained. The paper's head is an MLP 768→384→2.
"""

from __future__ import annotations

import torch
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.models.classifier import Classifier
from dpmammo.models.config import SwinTConfig
from dpmammo.models.registry import register_model
from dpmammo.models.weights import load_state_dict_strict, read_state_dict

TIMM_NAME = "swin_tiny_patch4_window7_224"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SwinBackbone(nn.Module):
    def __init__(self, timm_model: nn.Module):
        super().__init__()
        self.net = timm_model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.net(x)


def _timm_swin(cfg: SwinTConfig) -> nn.Module:
    import timm

    try:
        net = timm.create_model(TIMM_NAME, pretrained=cfg.pretrained, num_classes=0)
    except Exception as e:  # no network, no cache: say what to do instead
        raise DpMammoError(
            f"cannot get ImageNet weights for {TIMM_NAME} from timm ({e.__class__.__name__}); "
            "connect to the internet once, or set model.backbone_weights to a local checkpoint"
        ) from None
    if cfg.backbone_weights is not None:
        state = {k: v for k, v in read_state_dict(cfg.backbone_weights).items() if not k.startswith("head.")}
        load_state_dict_strict(net, state, str(cfg.backbone_weights))
    return net


@register_model("swin_t", SwinTConfig)
def swin_t(cfg: SwinTConfig) -> Classifier:
    backbone = SwinBackbone(_timm_swin(cfg))
    if cfg.head == "mlp":
        head = nn.Sequential(nn.Linear(768, 384), nn.ReLU(), nn.Linear(384, 2))
    else:
        head = nn.Linear(768, 2)
    return Classifier(backbone, head, input_size=224, num_features=768)
