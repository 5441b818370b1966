"""`swin_t`: timm's Swin-T (swin_tiny_patch4_window7_224) on grayscale patches.

Grayscale is replicated to three channels and normalised with ImageNet statistics, the way the
ImageNet weights were trained. The paper's head is an MLP 768→384→2.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.models.classifier import Classifier
from dpmammo.models.config import SwinTConfig
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


WEIGHTS_FILE = "model.safetensors"  # what timm downloads for this model from the Hugging Face Hub
PROBE_TIMEOUT_S = 10


def imagenet_weights_file() -> Path:
    """The local file of timm's ImageNet Swin-T weights: from the Hugging Face cache, else one
    download attempt.

    huggingface_hub retries a failed download with backoff (about a minute and a warning per try
    when offline), so the Hub is asked once, with a short timeout, before downloading; without
    network this is a one-line DpMammoError that says how to provide the file instead.
    """
    import timm
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache

    hub_id = timm.models.get_pretrained_cfg(TIMM_NAME).hf_hub_id
    cached = try_to_load_from_cache(hub_id, WEIGHTS_FILE)
    if isinstance(cached, str):
        return Path(cached)
    url = hf_hub_url(hub_id, WEIGHTS_FILE)
    try:
        if constants.HF_HUB_OFFLINE:
            raise ConnectionError("HF_HUB_OFFLINE is set")
        get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S)
        return Path(hf_hub_download(hub_id, WEIGHTS_FILE))
    except Exception as e:  # no network, a proxy, a firewall: say how to provide the file instead
        reason = f"{e.__class__.__name__}: {str(e).splitlines()[0][:120]}" if str(e) else e.__class__.__name__
        raise DpMammoError(
            f"ImageNet weights for {TIMM_NAME} are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"cannot be downloaded ({reason}); run once with internet access to cache them, or download {url} "
            "and set model.pretrained: false and model.backbone_weights: /path/to/model.safetensors"
        ) from None


def _timm_swin(cfg: SwinTConfig) -> nn.Module:
    import timm

    if cfg.pretrained:
        # timm loads the local file strictly (its classifier keys are dropped for num_classes=0).
        overlay = {"file": str(imagenet_weights_file())}
        net = timm.create_model(TIMM_NAME, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0)
    else:
        net = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0)
    if cfg.backbone_weights is not None:
        state = {k: v for k, v in read_state_dict(cfg.backbone_weights).items() if not k.startswith("head.")}
        load_state_dict_strict(net, state, str(cfg.backbone_weights))
    return net


def swin_t(cfg: SwinTConfig) -> Classifier:
    backbone = SwinBackbone(_timm_swin(cfg))
    if cfg.head == "mlp":
        head = nn.Sequential(nn.Linear(768, 384), nn.ReLU(), nn.Linear(384, 2))
    else:
        head = nn.Linear(768, 2)
    return Classifier(backbone, head, input_size=224, num_features=768)
