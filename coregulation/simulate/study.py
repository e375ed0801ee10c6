"""Simulation-study descriptions: a model, a design grid, replicates, a fit method.

A :class:`Study` is what a TOML or YAML file declares (``Study.from_file``)::

    [study]
    name = "ctvar-single-dyad"
    kind = "recovery"          # or "sbc": every replicate's truth drawn from the prior
    model = "ctvar"            # ctvar, oscillator or var1
    method = "laplace"         # map, laplace or nuts (svi too for many-dyad cells)
    replicates = 200
    seed = 1
    chunk = 50                 # replicates fitted together and stored as one file

    [model_options]            # keywords of the model, e.g. shock_correlation = true

    [truth]                    # population values; the rest: the prior median
    tau = [8.0, 20.0]

    [grid]                     # every combination is one cell
    coupling = ["none", "therapist_led"]
    coupling_size = [0.25, 0.5]
    duration = [600]

    [fit]                      # settings of the fit method
    num_warmup = 500

Grid factors (each a list; a missing factor takes its default): ``coupling``
(``none``, ``therapist_led``, ``client_led``, ``bidirectional``, ``opposite``),
``coupling_size``, ``num_dyads``, ``num_sessions``, ``duration`` (s),
``sampling_interval`` (s), ``me_share`` (measurement-error share of the observed
variance; ``none`` keeps ``me_sd`` of the truth), ``missing_rate``, ``burst_rate``
(artefact bursts per hour and role) and ``scenario`` (``"model"``, or
``"shared_drive"``: no coupling, a common driver, METHODS.md §1.5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

FAMILIES = {"ctvar": "CTVAR", "oscillator": "CoupledOscillator", "var1": "VAR1"}
KINDS = ("recovery", "sbc")
METHODS = ("map", "laplace", "nuts", "svi")
PATTERNS = {
    "none": (0.0, 0.0),
    "therapist_led": (1.0, 0.0),
    "client_led": (0.0, 1.0),
    "bidirectional": (1.0, 1.0),
    "opposite": (1.0, -1.0),
}
SCENARIOS = ("model", "shared_drive")
FACTORS = {
    "coupling": "therapist_led",
    "coupling_size": 0.5,
    "num_dyads": 1,
    "num_sessions": 1,
    "duration": 600.0,
    "sampling_interval": 1.0,
    "me_share": None,
    "missing_rate": 0.0,
    "burst_rate": 0.0,
    "scenario": "model",
}
FIT_KEYS = {"num_samples": int, "num_warmup": int, "num_chains": int,
            "target_accept": float, "max_tree_depth": int, "svi_steps": int}
_SECTIONS = ("study", "model_options", "truth", "grid", "fit", "dyad_sd")


def _fail(where: str, message: str):
    raise ValueError(f"study {where}: {message}")


@dataclasses.dataclass(frozen=True)
class Study:
    """A validated study description (see the module docstring for the fields)."""

    name: str = "study"
    kind: str = "recovery"
    model: str = "ctvar"
    method: str = "laplace"
    replicates: int = 100
    seed: int = 0
    chunk: int = 50
    model_options: Mapping = dataclasses.field(default_factory=dict)
    truth: Mapping = dataclasses.field(default_factory=dict)
    grid: Mapping = dataclasses.field(default_factory=dict)
    fit: Mapping = dataclasses.field(default_factory=dict)
    dyad_sd: Mapping = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_dict(cls, spec: Mapping) -> Study:
        """Validate a nested mapping (the parsed TOML/YAML) into a :class:`Study`.

    Examples
    --------
    >>> from coregulation.simulate import Study
    >>> study = Study.from_dict({
    ...     "study": {"model": "ctvar", "method": "laplace", "replicates": 50},
    ...     "grid": {"coupling": ["none", "therapist_led"], "duration": [300.0, 900.0]}})
    >>> len(study.cells()), study.cells()[1]["coupling"], study.cells()[1]["duration"]
    (4, 'none', 900.0)
    """
        if not isinstance(spec, Mapping):
            _fail("file", f"expected a table of sections {list(_SECTIONS)}; got {type(spec).__name__}.")
        unknown = sorted(set(spec) - set(_SECTIONS))
        if unknown:
            _fail("file", f"unknown section(s) {unknown}; known: {list(_SECTIONS)}.")
        head = dict(spec.get("study", {}))
        fields = {f.name for f in dataclasses.fields(cls)} - set(_SECTIONS[1:])
        unknown = sorted(set(head) - fields)
        if unknown:
            _fail("[study]", f"unknown key(s) {unknown}; known: {sorted(fields)}.")
        sections = {name: dict(spec.get(name, {}) or {}) for name in _SECTIONS[1:]}
        return cls(**head, **sections)

    @classmethod
    def from_file(cls, path) -> Study:
        """Read a study from a ``.toml`` or ``.yaml``/``.yml`` file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no study file {str(path)!r}.")
        text = path.read_text()
        if path.suffix.lower() == ".toml":
            import tomllib

            try:
                spec = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"study file {path}: not valid TOML ({err}).") from err
        elif path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError("YAML study files need PyYAML: pip install pyyaml.") from err
            try:
                spec = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(f"study file {path}: not valid YAML ({err}).") from err
        else:
            raise ValueError(f"study file must end in .toml, .yaml or .yml; got {path.name!r}.")
        return cls.from_dict(spec or {})

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            _fail("[study] name", f"must be a non-empty string; got {self.name!r}.")
        if self.kind not in KINDS:
            _fail("[study] kind", f"must be one of {KINDS}; got {self.kind!r}.")
        if self.model not in FAMILIES:
            _fail("[study] model", f"must be one of {sorted(FAMILIES)}; got {self.model!r}.")
        if self.method not in METHODS:
            _fail("[study] method", f"must be one of {METHODS}; got {self.method!r}.")
        for name in ("replicates", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(f"[study] {name}", f"must be a positive integer; got {value!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            _fail("[study] seed", f"must be a non-negative integer; got {self.seed!r}.")
        unknown = sorted(set(self.grid) - set(FACTORS))
        if unknown:
            _fail("[grid]", f"unknown factor(s) {unknown}; known: {sorted(FACTORS)}.")
        for factor, levels in self.grid.items():
            if not isinstance(levels, (list, tuple)) or not levels:
                _fail(f"[grid] {factor}", f"must be a non-empty list; got {levels!r}.")
            for level in levels:
                self._check_level(factor, level)
        unknown = sorted(set(self.fit) - set(FIT_KEYS))
        if unknown:
            _fail("[fit]", f"unknown setting(s) {unknown}; known: {sorted(FIT_KEYS)}.")
        for key, value in self.fit.items():
            kind = FIT_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind is int and not float(value).is_integer()):
                _fail(f"[fit] {key}", f"must be {'an integer' if kind is int else 'a number'}; "
                                      f"got {value!r}.")
        model = self.build_model()
        names = set(model.free_names())
        for section in ("truth", "dyad_sd"):
            unknown = sorted(set(getattr(self, section)) - names)
            if unknown:
                _fail(f"[{section}]", f"unknown parameter(s) {unknown}; {self.model} has "
                                      f"{sorted(names)}.")
        if self.kind == "sbc":
            if self.truth:
                _fail("[truth]", "an SBC study draws every truth from the prior; leave [truth] out.")
            bad = [f for f in ("coupling", "coupling_size", "me_share", "scenario") if f in self.grid]
            if bad:
                _fail("[grid]", f"{bad} set the truth, which an SBC study draws from the prior.")
            if any(level != 1 for f in ("num_dyads", "num_sessions") for level in self.grid.get(f, [1])):
                _fail("[grid]", "SBC runs on single-series cells (num_dyads = num_sessions = 1).")
        for cell in self.cells():
            if cell["scenario"] == "shared_drive" and cell["num_dyads"] * cell["num_sessions"] != 1:
                _fail("[grid] scenario", "shared_drive cells are single series (num_dyads = "
                                         "num_sessions = 1).")
            if self.method == "svi" and cell["num_dyads"] * cell["num_sessions"] == 1:
                _fail("[study] method", "svi is for many-dyad cells; single-series cells fit "
                                        "with map, laplace or nuts.")

    def _check_level(self, factor, level):
        where = f"[grid] {factor}"
        if factor == "coupling":
            if level not in PATTERNS:
                _fail(where, f"levels must be among {sorted(PATTERNS)}; got {level!r}.")
        elif factor == "scenario":
            if level not in SCENARIOS:
                _fail(where, f"levels must be among {SCENARIOS}; got {level!r}.")
        elif factor == "me_share":
            if level is not None and level != "none" and not (
                    isinstance(level, (int, float)) and 0 <= level < 1):
                _fail(where, f"levels must be in [0, 1) or 'none'; got {level!r}.")
        elif factor in ("num_dyads", "num_sessions"):
            if isinstance(level, bool) or not isinstance(level, int) or level < 1:
                _fail(where, f"levels must be positive integers; got {level!r}.")
        else:
            if isinstance(level, bool) or not isinstance(level, (int, float)) or not np.isfinite(level):
                _fail(where, f"levels must be numbers; got {level!r}.")
            positive = factor in ("duration", "sampling_interval")
            if (positive and level <= 0) or level < 0:
                _fail(where, f"levels must be {'positive' if positive else '>= 0'}; got {level!r}.")
            if factor == "missing_rate" and level >= 1:
                _fail(where, f"levels must be below 1; got {level!r}.")

    # ------------------------------------------------------------------ use

    def build_model(self):
        import coregulation as cr

        try:
            return getattr(cr, FAMILIES[self.model])(**dict(self.model_options))
        except TypeError as err:
            raise ValueError(f"study [model_options]: {err}") from err

    def cells(self) -> list[dict]:
        """Every combination of the grid's levels, in the file's order (last varies fastest)."""
        factors = list(FACTORS)
        levels = [list(self.grid.get(f, [FACTORS[f]])) for f in factors]
        out = []
        for combo in itertools.product(*levels):
            cell = dict(zip(factors, combo))
            if cell["me_share"] == "none":
                cell["me_share"] = None
            for f in ("duration", "sampling_interval", "coupling_size", "missing_rate",
                      "burst_rate"):
                cell[f] = float(cell[f])
            out.append(cell)
        return out

    def fit_settings(self) -> dict:
        return {k: FIT_KEYS[k](v) for k, v in self.fit.items()}

    def to_dict(self) -> dict:
        head = {f: getattr(self, f) for f in ("name", "kind", "model", "method", "replicates",
                                              "seed", "chunk")}
        return {"study": head, **{s: _plain(dict(getattr(self, s))) for s in _SECTIONS[1:]}}

    def fingerprint(self) -> str:
        """A hash of everything that changes results (the name does not)."""
        spec = self.to_dict()
        spec["study"] = {k: v for k, v in spec["study"].items() if k != "name"}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def chunks(self) -> list[tuple[int, int, int]]:
        """``(cell, first replicate, stop)`` for every stored unit of work."""
        return [(c, start, min(start + self.chunk, self.replicates))
                for c in range(len(self.cells()))
                for start in range(0, self.replicates, self.chunk)]


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
