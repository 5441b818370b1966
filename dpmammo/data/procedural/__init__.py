"""Images from public random processes: priors for pretraining that touch no private data.

Baradad et al. (NeurIPS 2021), "Learning to See by Looking at Noise", pretrain on dead leaves,
spectral noise and randomly initialised generators; DP-RandP (Tang et al., NeurIPS 2023) then
fine-tunes with DP-SGD. A program with a seed makes every image here, so pretraining on them is a
`public` stage in the privacy ledger: a DP run that starts from it keeps its full guarantee.

- `kinds`: the one table of processes (name → summary, classes, parameters, generator); torch-free,
  so the CLI's help and config validation read it without loading torch.
- `generators`: the processes themselves, vectorised torch on CPU.
- `store`: `generate(kind, seed=, start=, stop=, size=)` (on the fly, any index range) and the
  folder that `dpmammo data procedural` writes (images.npy, labels.npy, provenance.json).

Nothing here reads a data root: the only files touched are the output folder's.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.data.procedural.kinds": ["KINDS", "Kind", "check_kind", "kind_help"],
    "dpmammo.data.procedural.store": ["generate", "read_procedural", "write_procedural"],
})
