"""The malignancy-conditioned DCGAN (MCGAN) of the reference study, scaled to any power-of-two size.

Conditioning as in the reference design (Osuala et al., 2024): in the generator the label goes
through an embedding and a linear layer and is concatenated with the latent vector; in the
discriminator it becomes an extra image channel. Architecture after DCGAN (Radford et al., 2016):
transposed convolutions up to the patch size with tanh in the generator, strided convolutions in
the discriminator. Pixels live in [-1, 1] inside the models (see `to_model_range`).

The discriminator has no BatchNorm: under DP-SGD each sample's gradient must depend on that
sample alone (GroupNorm normalises within a sample). The generator is post-processing of the
DP discriminator's outputs, so BatchNorm is fine there.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from dpmammo.gan.config import GanModelConfig, GeneratorShape

# Under DP, Opacus's functorch per-sample gradients see the discriminator's label embedding take
# integer labels, take that for mixed precision, and open a CPU autocast of dtype int64; torch
# then warns that it disables that autocast. Nothing here uses autocast, so nothing is lost, and
# the warning says nothing to a user and floods GAN logs.
warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported",
                        category=UserWarning)

N_CLASSES = 2
BASE = 4  # spatial side of the generator's first feature map and the discriminator's last


def _levels(image_size: int) -> int:
    """Number of 2× resolution steps between BASE and image_size."""
    return int(math.log2(image_size // BASE))


def _channels(width: int, level: int) -> int:
    """DCGAN channel ladder: width·2^level, capped at 8·width (keeps 128 px affordable)."""
    return width * min(2 ** level, 8)


class Generator(nn.Module):
    """(z, label) → patch in [-1, 1], shape (N, 1, S, S)."""

    def __init__(self, cfg: GeneratorShape):
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.sample_blur = cfg.sample_blur
        self.embed = nn.Embedding(N_CLASSES, cfg.embed_dim)
        self.cond = nn.Linear(cfg.embed_dim, cfg.cond_dim)
        n = _levels(cfg.image_size)
        w = cfg.g_width
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.latent_dim + cfg.cond_dim, _channels(w, n - 1), BASE, 1, 0, bias=False),
            nn.BatchNorm2d(_channels(w, n - 1)), nn.ReLU(True),
        ]
        for level in range(n - 1, 0, -1):
            cin, cout = _channels(w, level), _channels(w, level - 1)
            layers += [*_upsample(cin, cout, cfg.g_upsample), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [*_upsample(_channels(w, 0), 1, cfg.g_upsample), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.cond(self.embed(labels))
        return self.net(torch.cat([z, c], dim=1)[:, :, None, None])

    @torch.no_grad()
    def render(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The patches a user gets (`gan sample`, the sample grids): the output, low-passed with a
        Gaussian of σ = `model.sample_blur` px if it is set. Training never sees this filter, so the
        discriminator does not push the generator to undo it. Radiomics texture features react
        sharply to it: `configs/mcgan-64.yaml` uses σ = 0.6, chosen on val FRD (benchmarks/README.md
        has the figures); larger σ over-smooths."""
        x = self(z, labels)
        if self.sample_blur > 0:
            k = 2 * math.ceil(3 * self.sample_blur) + 1
            x = gaussian_blur(x, [k, k], [self.sample_blur, self.sample_blur])
        return x


def _upsample(cin: int, cout: int, mode: str) -> list[nn.Module]:
    """One 2× step of the generator: DCGAN's 4×4 stride-2 transposed convolution, which covers the
    output pixels unevenly and leaves a checkerboard (Odena et al., 2016, Distill); "blurred"
    follows it with a fixed binomial low-pass, as StyleGAN's upsampling does (Karras et al., 2019),
    whose response at the Nyquist frequencies, where the checkerboard lives, is zero. On
    cbis-ddsm at 64 px it cut FRD by a quarter (115 → 89, TAC-GAN seed 0) but lowered val AUROC;
    `model.sample_blur` (a low-pass on sampled patches only) did better, see `Generator.render`."""
    up = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    return [up, Blur(cout)] if mode == "blurred" else [up]


class Blur(nn.Module):
    """Depthwise [1, 2, 1] ⊗ [1, 2, 1] / 16 filter, edges replicated; no parameters."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (torch.outer(k, k) / 16).expand(channels, 1, 3, 3).contiguous(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel, groups=x.shape[1])


class Discriminator(nn.Module):
    """(patch in [-1, 1], label) → one real/fake logit per sample."""

    def __init__(self, cfg: GanModelConfig):
        super().__init__()
        self.image_size = cfg.image_size
        self.embed = nn.Embedding(N_CLASSES, cfg.embed_dim)
        self.cond = nn.Linear(cfg.embed_dim, cfg.image_size * cfg.image_size)
        n = _levels(cfg.image_size)
        w, k = cfg.d_width, cfg.d_kernel
        pad = (k - 2) // 2  # halves the side for k = 4 and k = 6
        sn = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(2, _channels(w, 0), k, 2, pad)), nn.LeakyReLU(0.2)]
        for level in range(1, n):
            cin, cout = _channels(w, level - 1), _channels(w, level)
            layers += [sn(nn.Conv2d(cin, cout, k, 2, pad, bias=cfg.d_norm == "none")), *_norm(cfg.d_norm, cout),
                       nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.head = sn(nn.Conv2d(_channels(w, n - 1), 1, BASE, 1, 0))
        # Projection conditioning (Miyato & Koyama, 2018): + <embed(y), pooled features>. The label
        # channel alone lets D ignore the label while augmentation makes its job hard; the inner
        # product makes "does this look like class y" part of every logit.
        self.project = nn.Embedding(N_CLASSES, _channels(w, n - 1)) if cfg.d_projection else None
        # AC-GAN's auxiliary classifier shares the trunk; it sees the patch with a blank label
        # channel (it must not read the answer), pooled.
        self.classifier = nn.Linear(_channels(w, n - 1), N_CLASSES) if cfg.d_classifier else None
        # TAC-GAN's twin learns the class of generated patches on the same features.
        self.twin = nn.Linear(_channels(w, n - 1), N_CLASSES) if cfg.d_twin_classifier else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.cond(self.embed(labels)).view(-1, 1, self.image_size, self.image_size)
        h = self.net(torch.cat([x, c], dim=1))
        logit = self.head(h).flatten(1).squeeze(1)
        if self.project is not None:
            logit = logit + (self.project(labels) * h.sum(dim=(2, 3))).sum(1)
        return logit

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits (N, 2) of patches, without their labels, from the classifier and the twin
        (None without model.d_twin_classifier); one pass through the trunk serves both."""
        if self.classifier is None:
            raise RuntimeError("this discriminator has no auxiliary classifier (model.d_classifier=false)")
        blank = torch.zeros_like(x)
        h = self.net(torch.cat([x, blank], dim=1)).mean(dim=(2, 3))
        return self.classifier(h), None if self.twin is None else self.twin(h)


def _norm(kind: str, channels: int) -> list[nn.Module]:
    return [nn.GroupNorm(min(8, channels // 4), channels)] if kind == "group" else []


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) for convolutions, N(1, 0.02) for norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def to_model_range(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1], the generator's tanh range."""
    return x_uint8.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], clipped (tanh never quite reaches ±1; rounding may overshoot)."""
    return x.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def build(cfg: GanModelConfig, seed: int) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    g, d = Generator(cfg), Discriminator(cfg)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def build_generator(cfg: GeneratorShape, seed: int) -> Generator:
    """The generator alone, DCGAN-initialised from `seed` (for generators trained without a discriminator)."""
    torch.manual_seed(seed)
    g = Generator(cfg)
    g.apply(init_weights)
    return g
