"""Which records form each training step, and the randomness that decides it.

One object answers "what is the next batch?" for private and non-private training alike (after
jax_privacy's batch-selection strategies), so training loops do not branch on DP at every phase:

- `ShuffledBatches` (non-private): a fresh permutation per epoch, fixed-size batches, drawn from
  the run's seeded generator (reproducible, as it should be).
- `PoissonUnits` (DP-SGD): each unit of privacy (a patient, or a patch) joins a step independently
  with probability q, exactly as the accountant assumes. A sampled patient brings all of its
  patches, laid out contiguously, and `Batch.groups` says which unit each record belongs to so
  the optimizer clips each unit's summed gradient.

Secret randomness: the Poisson draws and the Gaussian noise of a DP stage come from its
`SecretKey` (dpmammo.privacy.secret: ChaCha20 keyed with 256 bits of OS entropy), never from
`train.seed`. If the seed decided them, anyone holding config.yaml could replay both neighbouring
worlds and remove the noise. The key exists only in memory; draws are addressed by step.

The number of private units N is not released either: under add/remove adjacency it is itself
private (B/N would tell whether a patient is in). The sample rate is set from a noisy count
N̂ = N + N(0, σ_N²) (sensitivity 1, `privacy.unit_count_noise`), a Gaussian release that the
stage's accounting includes; q = B / N̂, the steps and σ are then functions of N̂ only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from dpmammo.errors import DpMammoError
from dpmammo.privacy.accounting import check_delta
from dpmammo.privacy.config import PrivacyConfig, ReleasePrivacyConfig, Unit
from dpmammo.privacy.secret import SecretKey


def secret_key(privacy: PrivacyConfig | ReleasePrivacyConfig, seed: int) -> SecretKey:
    """The key of a DP stage's sampling and noise: OS entropy, or (tests only) derived from the seed."""
    return SecretKey.for_tests(seed) if privacy.seeded_noise_for_tests else SecretKey.fresh()


def noisy_unit_count(key: SecretKey, n_private_units: int, noise: float) -> float:
    """N̂ = N + N(0, noise²): the private unit count as released (a Gaussian mechanism, sensitivity 1)."""
    return n_private_units + noise * float(key.normal("count", 0, 1)[0])


def unit_ids(patients: Sequence[str], is_private: Sequence[bool], unit: Unit, what: str = "") -> torch.Tensor:
    """The unit of privacy of each record, numbered 0..U-1.

    Under `patient`, the private records of one patient share a unit; public (synthetic)
    records are each their own unit. Under `patch`, every record is its own unit. A private
    record without a patient id cannot be protected as part of its patient: refused.
    """
    keys: list[tuple] = []
    for i, (patient, private) in enumerate(zip(patients, is_private)):
        if unit == "patient" and private:
            if not patient:
                raise DpMammoError(f"privacy.unit=patient but a private patch of {what or 'the training set'} has no "
                                   "patient id (file names must start patient<ID>_); name the patients or use unit: patch")
            keys.append(("patient", patient))
        else:
            keys.append(("record", i))
    number: dict[tuple, int] = {}
    return torch.tensor([number.setdefault(k, len(number)) for k in keys], dtype=torch.long)


@dataclass(frozen=True)
class Batch:
    """One logical batch: record indices, and (DP) the unit number of each record.

    The records of a unit are contiguous, so physical chunks can be cut between units.
    `groups` is None when every record is its own unit.
    """

    idx: torch.Tensor
    groups: Optional[torch.Tensor] = None
    # Rows of the whole logical batch when this is one rank's share of it (a training over several
    # processes); None: this batch is the whole step. Non-private steps weight each rank's mean by it.
    step_rows: Optional[int] = None

    @property
    def rows_in_step(self) -> int:
        return len(self.idx) if self.step_rows is None else self.step_rows

    def __len__(self) -> int:
        return len(self.idx)

    def chunks(self, max_physical: int) -> Iterator[tuple[slice, bool]]:
        """(slice, is_last) chunks of at most `max_physical` records that never split a unit:
        a unit's gradient is clipped as a whole, so all of it must be in one backward pass."""
        n = len(self.idx)
        if self.groups is None or n == 0:
            starts = list(range(0, n, max_physical)) or [0]
            for i, s in enumerate(starts):
                yield slice(s, s + max_physical), i == len(starts) - 1
            return
        # Boundaries between units; greedily pack whole units into chunks.
        change = torch.nonzero(self.groups[1:] != self.groups[:-1]).squeeze(1) + 1
        bounds = [0, *change.tolist(), n]
        start = 0
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b - a > max_physical:
                raise DpMammoError(f"one unit of privacy has {b - a} patches, more than train.physical_batch_size="
                                   f"{max_physical}; raise physical_batch_size")
            if b - start > max_physical:
                yield slice(start, a), False
                start = a
        yield slice(start, n), True

    def repeated(self, k: int) -> "Batch":
        """Each record k times in a row (augmentation multiplicity: k views of it), every copy in its
        record's unit, so a unit's k·n rows stay contiguous and are clipped as one."""
        if k == 1:
            return self
        groups = self.groups if self.groups is not None else torch.arange(len(self.idx))
        return Batch(self.idx.repeat_interleave(k), groups.repeat_interleave(k),
                     None if self.step_rows is None else self.step_rows * k)

    def chunk_groups(self, part: slice) -> Optional[torch.Tensor]:
        """The unit numbers of the records in chunk `part`, renumbered from 0."""
        if self.groups is None:
            return None
        return torch.unique_consecutive(self.groups[part], return_inverse=True)[1]


def batch_selection(records: Sequence, privacy: Optional[PrivacyConfig], batch_size: int, seed_generator: torch.Generator,
                    seed: int, max_physical: int, what: str = "",
                    released_rate_units: Optional[float] = None,
                    views_per_record: int = 1, key: Optional[SecretKey] = None,
                    shard: tuple[int, int] = (0, 1)) -> "ShuffledBatches | PoissonUnits":
    """The batch selection of a training stage (records: PatchRecords).

    Without DP: shuffled batches from the run's seeded generator (no secret). Under DP: Poisson
    sampling of the units of `privacy.unit` with a fresh secret key, at the rate set by the noisy
    unit count (module docstring), with δ checked against the number of private units and every
    unit small enough to be clipped in one physical pass (with `views_per_record` rows per record:
    augmentation multiplicity). A resumed stage passes the count it released before
    (`released_rate_units`, from its checkpoint): the count is released once.

    One rank of a training over several processes passes `shard` = (rank, ranks) and rank 0's
    `key` (dpmammo.distributed): every rank then draws the same batch and keeps its share of it.
    """
    if privacy is None:
        return ShuffledBatches(len(records), batch_size, seed_generator, shard=shard)
    is_private = [r.source == "real" for r in records]
    units = unit_ids([r.patient for r in records], is_private, privacy.unit, what)
    key = key if key is not None else secret_key(privacy, seed)
    private = torch.tensor(is_private, dtype=torch.bool)
    n_private_units = len(torch.unique(units[private]))
    n_public_units = (int(units.max()) + 1 if len(units) else 0) - n_private_units
    if n_private_units:
        check_delta(privacy.delta, n_private_units, privacy.unit)
    if released_rate_units is None:
        counted = n_public_units + noisy_unit_count(key, n_private_units, privacy.unit_count_noise)
        released_rate_units = max(float(batch_size), counted)
    sampler = PoissonUnits(units, batch_size, key, rate_units=released_rate_units,
                           unit_count_noise=privacy.unit_count_noise, shard=shard)
    rows = sampler.max_unit_size * views_per_record
    if rows > max_physical:
        views = f" × {views_per_record} views (train.augment_multiplicity)" if views_per_record > 1 else ""
        raise DpMammoError(f"a unit of privacy has {sampler.max_unit_size} patches{views}, more than "
                           f"train.physical_batch_size={max_physical}: a unit's gradient is clipped in one pass; "
                           "raise physical_batch_size")
    return sampler


def epoch_steps(sampler, epochs: int, planned_steps: Optional[int] = None) -> list[int]:
    """Steps in each epoch: the sampler's own epoch length, or (DP) the planned, calibrated number
    of Poisson steps spread over the epochs, so that exactly the accounted steps are taken."""
    if planned_steps is None:
        return [sampler.steps_per_epoch] * epochs
    base, extra = divmod(planned_steps, epochs)
    return [base + (1 if e < extra else 0) for e in range(epochs)]


class ShuffledBatches:
    """Non-private sampling: a fresh permutation each epoch, consumed in batches of `batch_size`."""

    private = False

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, *, shard: tuple[int, int] = (0, 1)):
        """shard: (rank, ranks) of a training over several processes: every rank draws the same
        permutation (the same seeded generator) and keeps every ranks-th record of a batch."""
        if batch_size > n:
            raise DpMammoError(f"train.batch_size={batch_size} exceeds the {n} training patches")
        self.n, self.batch_size, self.generator, self.shard = n, batch_size, generator, shard
        self.steps_per_epoch = -(-n // batch_size)
        self._perm, self._pos = torch.empty(0, dtype=torch.long), 0

    def next_batch(self) -> Batch:
        if self._pos >= len(self._perm):  # an epoch ends exactly when its permutation is used up
            self._perm, self._pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        rank, ranks = self.shard
        return Batch(idx) if ranks == 1 else Batch(idx[rank::ranks], step_rows=len(idx))


class PoissonUnits:
    """DP sampling: every unit joins a step independently with probability q = expected / rate_units.

    `rate_units` is the (noisy, released) unit count the rate is set from; by default the exact
    number of units, for callers whose unit count is public (tests, audits of a known pool).

    With `shard` = (rank, ranks), one rank of a training over several processes: the draw is the
    whole step's (the same key on every rank), and the batch holds the sampled units u ≡ rank
    (mod ranks) only. So each unit is sampled once per step at rate q, and clipped on one rank.
    """

    private = True

    def __init__(self, units: torch.Tensor, expected_units: int, key: SecretKey, *,
                 rate_units: Optional[float] = None, unit_count_noise: Optional[float] = None,
                 shard: tuple[int, int] = (0, 1)):
        """units: the unit number of each record (see `unit_ids`)."""
        rank, ranks = shard
        if not 0 <= rank < ranks:
            raise ValueError(f"shard {shard}: expected (rank, ranks) with 0 <= rank < ranks")
        self.shard = shard
        self.n_units = int(units.max()) + 1 if len(units) else 0
        if not 0 < expected_units <= self.n_units:
            raise DpMammoError(f"batch_size={expected_units} must be between 1 and the {self.n_units} units of privacy "
                               "in the training set")  # an error for the data owner: not released
        self.rate_units = float(self.n_units if rate_units is None else rate_units)
        self.unit_count_noise = unit_count_noise  # σ of the count behind rate_units (None: exact, public)
        self.sample_rate = min(1.0, expected_units / self.rate_units)
        self.expected_units = expected_units
        self.key = key
        self.draws = 0  # batches drawn so far: the index of the next draw (public: the step count)
        self.grouped = self.n_units < len(units)  # some unit has several records
        order = torch.argsort(units, stable=True)
        counts = torch.bincount(units, minlength=self.n_units)
        self._records_of = torch.split(order, counts.tolist())  # unit → its record indices
        self.max_unit_size = int(counts.max()) if len(units) else 0

    def records_of_units(self) -> list[torch.Tensor]:
        """The record indices of each unit, in unit order (every rank holds all of them)."""
        return list(self._records_of)

    def next_batch(self) -> Batch:
        u = self.key.uniform("sample", self.draws, self.n_units)
        self.draws += 1
        chosen = (u < self.sample_rate).nonzero().squeeze(1)
        rank, ranks = self.shard
        chosen = chosen[chosen % ranks == rank].tolist()  # this rank's share: every unit on exactly one rank
        if not chosen:
            return Batch(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long) if self.grouped else None)
        parts = [self._records_of[u] for u in chosen]
        idx = torch.cat(parts)
        if not self.grouped:
            return Batch(idx)
        groups = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor([len(p) for p in parts]))
        return Batch(idx, groups)
