"""The random processes of `dpmammo.data.procedural.kinds`, vectorised over a batch in torch (CPU).

Every function has the signature `f(gen, n, size, p) -> (images, labels)`: `gen` is the only source
of randomness, `p` the kind's parameter table (kinds.py, recorded in provenance as used here);
images are float (n, size, size) in [0, 1], labels int64 (n,) indexing the kind's `classes`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def uniform(gen: torch.Generator, shape, lo_hi) -> torch.Tensor:
    lo, hi = lo_hi
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


def grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (yy, xx), each (size, size) float32."""
    r = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(r, r, indexing="ij")


def freqs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies (cycles per pixel) of an rfft2 of a (size, size) image: fy (S, 1), fx (1, S//2+1)."""
    return torch.fft.fftfreq(size)[:, None], torch.fft.rfftfreq(size)[None, :]


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the last two dimensions."""
    s, m = torch.std_mean(x, dim=(-2, -1), keepdim=True)
    return (x - m) / (s + 1e-8)


def power_noise(gen: torch.Generator, n: int, size: int, beta: torch.Tensor, fr: torch.Tensor | None = None) -> torch.Tensor:
    """Standardised noise with a 1/f^beta amplitude spectrum, beta per image (n,); `fr` (n or 1, S, S//2+1)
    replaces the isotropic radial frequency (anisotropic noise)."""
    if fr is None:
        fy, fx = freqs(size)
        fr = torch.sqrt(fy**2 + fx**2)[None]
    fr = fr.clone()
    fr[:, 0, 0] = 1.0
    amp = fr ** (-beta[:, None, None])
    amp[:, 0, 0] = 0.0
    white = torch.randn(n, size, size, generator=gen)
    return standardise(torch.fft.irfft2(torch.fft.rfft2(white) * amp, s=(size, size)))


def gaussian_blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Blur each image of x (n, S, S) with its own Gaussian of std `sigma_px` (n,) (periodic, via FFT)."""
    size = x.shape[-1]
    fy, fx = freqs(size)
    h = torch.exp(-2 * math.pi**2 * sigma_px[:, None, None] ** 2 * (fy**2 + fx**2)[None])
    return torch.fft.irfft2(torch.fft.rfft2(x) * h, s=(size, size))


def dead_leaves(gen: torch.Generator, n: int, size: int, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead leaves (Lee, Mumford & Huang 2001; Baradad et al. 2021): `leaves` shapes of uniform random
    grey painted back to front, radii from a density ∝ r^-sigma on [r_min, r_max]·size, centres
    uniform. Per image, the shapes are all discs (label 0), all oriented rectangles (1) or a mix (2)."""
    n_leaves, sigma = p["leaves"], p["sigma"]
    mode = torch.randint(0, 3, (n,), generator=gen)
    u = torch.rand(n, n_leaves, generator=gen)
    a, b = p["r_min"] ** (1 - sigma), p["r_max"] ** (1 - sigma)
    radius = ((a + u * (b - a)) ** (1 / (1 - sigma)) * size).clamp(min=0.75)  # inverse CDF
    cx, cy = torch.rand(n, n_leaves, generator=gen) * size, torch.rand(n, n_leaves, generator=gen) * size
    grey = torch.rand(n, n_leaves, generator=gen)
    mixed_round = torch.rand(n, n_leaves, generator=gen) < 0.5
    is_round = torch.where(mode[:, None] == 0, True, torch.where(mode[:, None] == 1, False, mixed_round))
    theta = torch.rand(n, n_leaves, generator=gen) * math.pi
    aspect = uniform(gen, (n, n_leaves), p["square_aspect"])
    hx = radius / torch.sqrt(1 + aspect**2)
    hy = aspect * hx  # the rectangle's corners lie on the circle of `radius`: both fit its window
    cos, sin = torch.cos(theta), torch.sin(theta)

    def inside(dx, dy, i):  # whether offsets (dx, dy) from leaf i's centre lie in it; i indexes dim 1
        t = lambda v: v.gather(1, i).view(*i.shape, *([1] * (dx.dim() - 2)))  # noqa: E731
        disc = dx * dx + dy * dy <= t(radius) ** 2
        u_, v_ = dx * t(cos) + dy * t(sin), dy * t(cos) - dx * t(sin)
        return torch.where(t(is_round), disc, (u_.abs() <= t(hx)) & (v_.abs() <= t(hy)))

    # Each pixel shows its top leaf, the one of highest index covering it. Most leaves are small:
    # they are tested in a window around their centre only, the few large ones on the whole image.
    top = torch.full((n, size * size), -1, dtype=torch.long)
    half = max(4, size // 8)
    off = torch.arange(-half, half + 1, dtype=torch.float32)
    oy, ox = (v.reshape(1, 1, -1) for v in torch.meshgrid(off, off, indexing="ij"))
    px, py = cx.floor()[:, :, None] + ox, cy.floor()[:, :, None] + oy  # (n, L, window) pixel coordinates
    every = torch.arange(n_leaves).expand(n, n_leaves)
    hit = inside(px + 0.5 - cx[:, :, None], py + 0.5 - cy[:, :, None], every) & (radius <= half)[:, :, None]
    hit &= (px >= 0) & (px < size) & (py >= 0) & (py < size)
    flat = (py.clamp(0, size - 1) * size + px.clamp(0, size - 1)).long().view(n, -1)
    value = torch.where(hit, every[:, :, None], -1).view(n, -1)
    top.scatter_reduce_(1, flat, value, reduce="amax")
    large = radius > half
    order = torch.sort(large.long(), dim=1, descending=True, stable=True).indices  # large leaves first
    yy, xx = grid(size)
    for k in range(int(large.sum(1).max())):
        i = order[:, k:k + 1]
        covered = inside(xx + 0.5 - cx.gather(1, i)[:, :, None], yy + 0.5 - cy.gather(1, i)[:, :, None], i)
        covered &= large.gather(1, i)[:, :, None]
        top = torch.maximum(top, torch.where(covered, i[:, :, None], -1).view(n, -1))
    background = torch.rand(n, 1, generator=gen)
    img = torch.where(top >= 0, grey.gather(1, top.clamp(min=0)), background).view(n, size, size)
    return img, mode


def spectral(gen: torch.Generator, n: int, size: int, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """1/f^beta noise (natural images have beta ≈ 2 in amplitude; Baradad et al.'s range 0.5–3.5),
    with a random orientation and anisotropy, mean, contrast and a tone curve tanh(kx)/tanh(k) from
    nearly linear (k small) to nearly two-level (k large). Label: the beta bin."""
    beta = uniform(gen, n, p["beta"])
    theta = torch.rand(n, generator=gen) * math.pi
    aniso = uniform(gen, n, p["anisotropy"])[:, None, None]
    fy, fx = freqs(size)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    fu, fv = fx * c + fy * s, fy * c - fx * s
    fr = torch.sqrt((fu * aniso) ** 2 + (fv / aniso) ** 2)
    x = power_noise(gen, n, size, beta, fr)
    k = uniform(gen, n, p["tone_gain"])[:, None, None]
    std, mean = uniform(gen, n, p["std"])[:, None, None], uniform(gen, n, p["mean"])[:, None, None]
    img = mean + std * torch.tanh(k * x) / torch.tanh(k)
    lo, hi = p["beta"]
    edges = torch.tensor([lo + (hi - lo) * q for q in (0.25, 0.5, 0.75)])
    return img, torch.bucketize(beta, edges, right=True)


def random_generator(gen: torch.Generator, n: int, size: int, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A StyleGAN-like generator whose weights are drawn per image (Baradad et al.'s random StyleGAN
    family, small): a noise map at size / 2^upsamplings, then per layer bilinear upsampling, a 3×3
    conv with per-image random weights (a grouped conv: one group per image), instance norm, a random
    per-channel style (scale, bias), noise injection and the activation; a random 1×1 projection to
    grey. Label: the activation (leaky ReLU or sine) used in every layer of that image."""
    act = torch.randint(0, 2, (n,), generator=gen)
    img = torch.empty(n, size, size)
    for a in (0, 1):  # each activation's images in one batch: no image computes both
        idx = torch.nonzero(act == a).flatten()
        img[idx] = _random_net(gen, len(idx), size, p, sine=a == 1)
    return img, act


def _random_net(gen: torch.Generator, n: int, size: int, p: dict, *, sine: bool) -> torch.Tensor:
    c, ups = p["channels"], p["upsamplings"]
    x = torch.randn(n, c, size // 2**ups, size // 2**ups, generator=gen)
    slope = uniform(gen, (n, 1, 1, 1), p["leaky_slope"])
    freq = uniform(gen, (n, 1, 1, 1), p["sine_freq"])
    for _ in range(ups):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h = x.shape[-1]
        w = torch.randn(n, c, c, 3, 3, generator=gen) * (uniform(gen, (n, 1, 1, 1, 1), p["weight_gain"]) / math.sqrt(c * 9))
        x = F.conv2d(F.pad(x.reshape(1, n * c, h, h), (1, 1, 1, 1), mode="reflect"), w.reshape(n * c, c, 3, 3),
                     groups=max(n, 1)).reshape(n, c, h, h)
        style = torch.exp(0.5 * torch.randn(n, c, 1, 1, generator=gen))
        shift = 0.5 * torch.randn(n, c, 1, 1, generator=gen)
        x = standardise(x) * style + shift
        x = x + uniform(gen, (n, 1, 1, 1), p["noise"]) * torch.randn(n, 1, h, h, generator=gen)
        x = torch.sin(freq * x) if sine else torch.where(x >= 0, x, slope * x)
    w_out = torch.randn(n, c, generator=gen) / math.sqrt(c)
    y = standardise(torch.einsum("nchw,nc->nhw", x, w_out))
    return torch.sigmoid(uniform(gen, (n, 1, 1), p["out_gain"]) * y + 0.5 * torch.randn(n, 1, 1, generator=gen))


def mammo_phantom(gen: torch.Generator, n: int, size: int, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A randomised `dpmammo.data.phantoms` patch: a mass on 1/f^beta tissue texture with faint
    strands, calcification-like specks, blur and detector noise. Label 1 (spiculated/irregular):
    a lobulated, less sharp margin and radial spicules (subtle in a fraction); label 0 (round/smooth):
    a nearly elliptical, sharp margin. Size, contrast, position, texture and specks are drawn from
    the same ranges for both labels, so only the margin tells them apart."""
    s = size / 128.0
    yy, xx = grid(size)
    label = torch.randint(0, 2, (n,), generator=gen)
    irregular = (label == 1)[:, None, None]
    col = lambda v: v[:, None, None]  # noqa: E731

    # Tissue: coarse and fine power-law texture, a gentle gradient, up to three faint strands.
    img = power_noise(gen, n, size, uniform(gen, n, p["tissue_beta"])) * col(uniform(gen, n, p["tissue_amp"]))
    img = img + power_noise(gen, n, size, torch.ones(n)) * col(uniform(gen, n, (0.005, 0.03)))
    g = uniform(gen, (n, 2), (-0.08, 0.08)) / size
    img = img + col(uniform(gen, n, (0.2, 0.45))) + col(g[:, 0]) * (xx - size / 2) + col(g[:, 1]) * (yy - size / 2)
    n_strands = torch.randint(0, 4, (n,), generator=gen)
    for j in range(3):
        ang, off = torch.rand(n, generator=gen) * math.pi, uniform(gen, n, (-0.45, 0.45)) * size
        wid, amp = uniform(gen, n, (0.8, 1.8)) * s, uniform(gen, n, (0.02, 0.06)) * (n_strands > j)
        dist = (xx - size / 2) * col(torch.sin(ang)) - (yy - size / 2) * col(torch.cos(ang)) - col(off)
        img = img + col(amp) * torch.exp(-((dist / col(wid)) ** 2))

    # Mass: boundary r(θ) = R (1 + Σ_k a_k cos(kθ + φ_k)), k = 2 (ellipticity) .. 9 (lobulation).
    cx = size / 2 + uniform(gen, n, (-8, 8)) * s
    cy = size / 2 + uniform(gen, n, (-8, 8)) * s
    radius = uniform(gen, n, p["radius_px_at_128"]) * s
    dx, dy = xx - col(cx), yy - col(cy)
    rho = torch.sqrt(dx**2 + dy**2)
    theta = torch.atan2(dy, dx)
    lob = torch.where(irregular[:, :, 0], uniform(gen, (n, 7), p["lobulation_irregular"]) * uniform(gen, (n, 1), (0.5, 1.2)),
                      uniform(gen, (n, 7), p["lobulation_smooth"]))
    amps = torch.cat([uniform(gen, (n, 1), p["ellipticity"]), lob], dim=1)
    phases = torch.rand(n, 8, generator=gen) * 2 * math.pi
    boundary = torch.ones_like(rho)
    for i, k in enumerate(range(2, 10)):
        boundary = boundary + col(amps[:, i]) * torch.cos(k * theta + col(phases[:, i]))
    r_theta = col(radius) * boundary
    edge = torch.where(label == 1, uniform(gen, n, p["edge_px_irregular"]), uniform(gen, n, p["edge_px_smooth"])) * s
    body = torch.sigmoid((r_theta - rho) / col(edge))
    dome = 0.85 + 0.15 * (1.0 - (rho / r_theta.clamp(min=1e-6)) ** 2).clamp(0.0, 1.0)
    mass = body * dome

    # Spicules (label 1 only): thin, tapering, slightly curved lines leaving the boundary.
    subtle = torch.rand(n, generator=gen) < p["subtle_fraction"]
    lo, hi = p["spicules"]
    slo, shi = p["subtle_spicules"]
    few, many = torch.randint(slo, shi + 1, (n,), generator=gen), torch.randint(lo, hi + 1, (n,), generator=gen)
    count = torch.where(subtle, few, many)
    count = count * (label == 1)
    strength = torch.where(subtle, uniform(gen, n, (0.2, 0.5)), uniform(gen, n, (0.5, 0.9)))
    alpha = uniform(gen, (n, hi), (-math.pi, math.pi))
    length = uniform(gen, (n, hi), (0.7, 1.5)) * radius[:, None]
    width = uniform(gen, (n, hi), (1.2, 2.2)) * s
    bend = uniform(gen, (n, hi), (-0.25, 0.25)) / radius.clamp(min=1.0)[:, None]
    level = strength[:, None] * uniform(gen, (n, hi), (0.7, 1.0)) * (torch.arange(hi)[None] < count[:, None])
    r = col(radius)
    for j in range(int(count.max()) if n else 0):
        ca, sa = col(torch.cos(alpha[:, j])), col(torch.sin(alpha[:, j]))
        along, perp = dx * ca + dy * sa, dy * ca - dx * sa
        from_edge = along - r
        perp = perp - col(bend[:, j]) * from_edge * from_edge.abs()
        t = ((along - 0.6 * r) / (0.4 * r + col(length[:, j]))).clamp(0.0, 1.0)
        w = col(width[:, j]) * (1.0 - 0.7 * t)
        line = torch.exp(-((perp / w) ** 2)) * (1.0 - t) * (along > 0.6 * r)
        mass = torch.maximum(mass, col(level[:, j]) * line)
    img = img + col(uniform(gen, n, p["contrast"])) * mass

    # Calcification-like specks (both labels): impulses near the mass or anywhere, blurred to dots.
    slo, shi = p["specks"]
    n_specks = torch.randint(slo, shi + 1, (n,), generator=gen)
    near = torch.rand(n, 1, generator=gen) < 0.5
    spread = lambda c: c[:, None] + torch.randn(n, shi, generator=gen) * radius[:, None]  # noqa: E731
    anywhere = lambda: torch.rand(n, shi, generator=gen) * size  # noqa: E731
    px = torch.where(near, spread(cx), anywhere())
    py = torch.where(near, spread(cy), anywhere())
    sigma = uniform(gen, n, (0.5, 1.0)) * max(s, 0.5)
    height = uniform(gen, (n, shi), (0.1, 0.4)) * (torch.arange(shi)[None] < n_specks[:, None])
    flat = (py.round().clamp(0, size - 1) * size + px.round().clamp(0, size - 1)).long()
    impulses = torch.zeros(n, size * size).scatter_add_(1, flat, height * col(2 * math.pi * sigma**2)[:, :, 0])
    img = img + gaussian_blur(impulses.view(n, size, size), sigma)

    # Acquisition: blur, detector noise.
    img = gaussian_blur(img, uniform(gen, n, p["blur_px"]) * s)
    img = img + torch.randn(n, size, size, generator=gen) * col(uniform(gen, n, p["noise"]))
    return img, label
