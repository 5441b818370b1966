"""Generators by name, after timm's model registry: a name → (config class, train function).

Registered: `mcgan`, the conditional DCGAN of the reference study (optionally with a DP-SGD
discriminator, dpmammo.gan.train), and `dp-merf`, the same generator trained on one DP release
of the data's mean embedding in random Fourier features (dpmammo.gan.merf).

Every generator run is trained by `dpmammo gan train CONFIG`, whose top-level `generator:` key
names the generator (default `mcgan`, so older configs keep working); its config class is the
only set of allowed keys. Every generator's config has `data.train` (the private sets it sees),
`model` (the conditional generator's shape: image_size, latent_dim, embed_dim, cond_dim,
g_width, which `dpmammo.gan.sample` builds), and `privacy` (absent: non-private). Every train
function writes the same run directory (config.yaml, model.safetensors = the generator,
privacy.json, metrics.json last), so `gan sample` and `gan score` work on any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from dpmammo.config import StrictModel, apply_overrides, parse_config, read_yaml
from dpmammo.errors import DpMammoError
from dpmammo.lazy import load_spec

DEFAULT_GENERATOR = "mcgan"
TrainFn = Callable[..., dict]  # train(cfg, out, *, force=False, progress=True) -> metrics
# The one table: name → ("module:class" of its config, "module:function" of its train function),
# imported on use (the train functions need torch). Config validation, error messages and the
# CLI help of `gan train` read it.
GENERATORS: dict[str, tuple[str, str]] = {
    "mcgan": ("dpmammo.gan.config:GanConfig", "dpmammo.gan.train:train_gan"),
    "dp-merf": ("dpmammo.gan.merf_config:MerfConfig", "dpmammo.gan.merf:train_merf"),
}


def register_generator(name: str, config_spec: str, train_spec: str) -> None:
    """Add generator `name`: its config class and train function as "module:attribute", imported
    on use. The config class has `generator: Literal[name]`, `data.train`, `model` (a
    `GeneratorShape`) and `privacy`; the train function writes a run directory (module docstring)."""
    if name in GENERATORS:
        raise DpMammoError(f"generator {name!r} is registered already; choose another name")
    GENERATORS[name] = (config_spec, train_spec)


def list_generators() -> list[str]:
    """The registered generators' names, the default first."""
    return list(GENERATORS)


def generator_config_class(name: str) -> type[StrictModel]:
    if name not in GENERATORS:
        raise DpMammoError(f"unknown generator {name!r}; registered generators: {', '.join(list_generators())}")
    return load_spec(GENERATORS[name][0])


def parse_generator_config(data: dict[str, Any], source: str) -> StrictModel:
    """A generator config from a mapping; `generator:` picks the class (default mcgan)."""
    name = data.get("generator", DEFAULT_GENERATOR)
    if not isinstance(name, str):
        raise DpMammoError(f"{source}: generator: expected a name ({', '.join(list_generators())}), got {name!r}")
    return parse_config(generator_config_class(name), data, source)


def load_generator_config(path: str | Path, overrides: Optional[list[str]] = None) -> StrictModel:
    """Read a generator config file, apply `--set` overrides, validate against its generator's class."""
    return parse_generator_config(apply_overrides(read_yaml(path), overrides or []), str(path))


def is_generator_config(data: dict[str, Any]) -> bool:
    """Whether a mapping validates as some generator's config (to name a run's kind)."""
    try:
        parse_generator_config(data, "")
    except DpMammoError:
        return False
    return True


def train_generator(cfg: StrictModel, out: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Train the generator `cfg` names into run directory `out` (resumes an interrupted run)."""
    from dpmammo.data.sets import data_inputs
    from dpmammo.files import check_out

    check_out(out, data_inputs(cfg.data.root, cfg.data.train))  # before anything is touched
    name = getattr(cfg, "generator", DEFAULT_GENERATOR)
    return load_spec(GENERATORS[name][1])(cfg, out, force=force, progress=progress)
