"""One validation layer for the numbers prepare reads: non-finite values and implausible values.

Every factor and target layer read by ``prepare_dataset`` passes through a :class:`ValueScreen`:

- non-finite values (``inf``, ``-inf``; NaN is nodata already) and values with ``|x| >= 1e30``
  (float32 fill values such as 3.4e38 or 9.97e36) are never data;
- values outside the plausible physical range of the variable, where the variable is known from its
  name and units (the table :data:`RANGES`), are not data either (e.g. soil moisture 0..1 m3/m3,
  temperature 150..350 K).

They become nodata (NaN in the cube) and :meth:`ValueScreen.report` logs one ``warning:`` line per
layer that names the layer, the count and the dates/bands; with ``strict=True`` it raises
:class:`ImplausibleValuesError` instead. A layer whose valid values are *mostly* out of range is an
error in both modes: its units are not the ones the table assumes, and dropping them would leave a
layer of gaps, not a layer with a few bad pixels.

The screen is applied to source pixels before they are warped onto the grid (``rasters._read_block``),
so a bad pixel never leaks into its neighbours through bilinear or average resampling. No qgis import.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: any |value| at or above this is a fill value, not data, whatever the variable
ABS_LIMIT = 1e30


class ImplausibleValuesError(ValueError):
    """A layer holds non-finite or implausible values (strict mode), or is mostly out of range."""


def _unit_key(units: str) -> str:
    u = (units or "").strip().lower()
    u = u.replace("**", "").replace("^", "").replace("³", "3").replace("°", "deg").replace(" ", "")
    return u


# unit spellings -> canonical unit
_UNIT_ALIASES = {
    "m3/m3": "m3/m3", "m3m-3": "m3/m3", "cm3/cm3": "m3/m3", "cm3cm-3": "m3/m3", "m3.m-3": "m3/m3",
    "1": "fraction", "fraction": "fraction", "-": "fraction",
    "%": "%", "percent": "%", "pct": "%",
    "k": "K", "kelvin": "K", "degk": "K",
    "degc": "degC", "c": "degC", "celsius": "degC", "degreec": "degC", "degreesc": "degC",
    "degree_celsius": "degC", "degrees_celsius": "degC",
    "m": "m", "mm": "mm", "cm": "cm", "kgm-2": "kg m-2", "kg/m2": "kg m-2", "kgm-2s-1": "kg m-2 s-1",
    "kg/m2/s": "kg m-2 s-1", "mm/day": "mm", "mmday-1": "mm", "mm/d": "mm", "mmw.e.day-1": "mm",
    "m/s": "m s-1", "ms-1": "m s-1", "km/h": "km h-1", "kmh-1": "km h-1",
    "wm-2": "W m-2", "w/m2": "W m-2", "jm-2": "J m-2", "j/m2": "J m-2",
}


def canonical_unit(units: str) -> Optional[str]:
    return _UNIT_ALIASES.get(_unit_key(units))


@dataclass(frozen=True)
class VariableKind:
    """A kind of variable: how its names look, and its plausible range per unit. ``default`` is the
    range used when the layer gives no unit (or one not in ``by_unit``): the union over the units the
    variable is commonly given in, so that an unlabelled layer in any of them passes."""
    kind: str
    pattern: str
    by_unit: Dict[str, Tuple[float, float]]
    default: Tuple[float, float]

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name.lower()) is not None


_T = r"(?:^|[^a-z])"      # token start (names are like era5_t2m, gldas_noah21_SoilTMP0_10cm_inst)
_E = r"(?:$|[^a-z])"      # token end

#: the table, first match wins (so "soil temperature" is a temperature, "snowfall" a precipitation)
RANGES: List[VariableKind] = [
    VariableKind("temperature", _T + r"(?:t2m?|d2m|skt|stl\d|tas(?:max|min)?|tmax|tmin|lst|lmlt)" + _E
                 + r"|temp|tmp", {"K": (150.0, 350.0), "degC": (-125.0, 80.0)}, (-125.0, 350.0)),
    VariableKind("soil moisture", _T + r"(?:sm|swvl\d|vsm|vwc|sm_?\d+\w*)" + _E
                 + r"|soil_?moist|soilmoi|moisture|volumetric_soil_water",
                 {"m3/m3": (0.0, 1.0), "fraction": (0.0, 1.0), "%": (0.0, 100.0), "kg m-2": (0.0, 10000.0),
                  "mm": (0.0, 10000.0)}, (0.0, 10000.0)),
    VariableKind("precipitation", _T + r"(?:tp|pr|prcp|ppt|mtpr)" + _E + r"|precip|rain|snowfall",
                 {"mm": (-1e-3, 2000.0), "m": (-1e-6, 2.0), "kg m-2": (-1e-3, 2000.0),
                  "kg m-2 s-1": (-1e-8, 0.05)}, (-1e-3, 1e4)),
    VariableKind("snow", _T + r"(?:sd|sde|swe|snowc|smlt|rsn)" + _E + r"|snow",
                 {"m": (0.0, 100.0), "mm": (0.0, 1e5), "kg m-2": (0.0, 1e5), "%": (0.0, 100.0),
                  "fraction": (0.0, 1.0)}, (0.0, 1e5)),
    VariableKind("wind", _T + r"(?:u10|v10|u100|v100|ws|wspd|sfcwind|u|v)" + _E + r"|wind",
                 {"m s-1": (-150.0, 150.0), "km h-1": (-540.0, 540.0)}, (-540.0, 540.0)),
    VariableKind("radiation", _T + r"(?:ssr|str|ssrd|strd|slhf|sshf|rsds|rlds|swnet|lwnet|swdown|lwdown)" + _E
                 + r"|radiat|solar|thermal|net_?(?:sw|lw)",
                 {"W m-2": (-2000.0, 2000.0), "J m-2": (-2e8, 2e8)}, (-2e8, 2e8)),
    VariableKind("relative humidity", _T + r"(?:rh|hurs)" + _E + r"|relative_?humidity",
                 {"%": (0.0, 105.0), "fraction": (0.0, 1.05)}, (0.0, 105.0)),
]

#: the soil-moisture target: the plugin's SM is volumetric (m3/m3), whatever the layer says
TARGET_RANGE = (0.0, 1.0)
TARGET_UNIT = "m3/m3"


def plausible_range(name: str, units: str = "") -> Tuple[Optional[str], float, float, str]:
    """(kind or None, lo, hi, unit text) for a variable name and its units; (None, -1e30, 1e30, '') when
    the variable is not in the table (then only finiteness and |x| < 1e30 are checked)."""
    for k in RANGES:
        if k.matches(name or ""):
            unit = canonical_unit(units)
            if unit in k.by_unit:
                lo, hi = k.by_unit[unit]
                return k.kind, lo, hi, unit
            lo, hi = k.default
            return k.kind, lo, hi, (f"any unit ({units} is not in the table)" if (units or "").strip()
                                    else "any of its usual units")
    return None, -ABS_LIMIT, ABS_LIMIT, ""


def _fmt(v: float) -> str:
    return f"{v:.6g}"


@dataclass
class ValueScreen:
    """Screens blocks of one layer's values and counts what it removed, per band.

    name: the layer name in messages; param: the parameter it came from (FACTORS, TARGET, STATIONS);
    dates: the date of each source band (band b is dates[b - 1]); lo/hi: the plausible range.
    """
    name: str
    param: str = "FACTORS"
    dates: Optional[Sequence] = None
    kind: Optional[str] = None
    lo: float = -ABS_LIMIT
    hi: float = ABS_LIMIT
    unit: str = ""
    strict: bool = False
    labels: Optional[Sequence[str]] = None     # series names instead of dates (station ids)
    nonfinite: Dict[int, int] = field(default_factory=dict)     # band -> count (inf, -inf, |x| >= 1e30)
    outside: Dict[int, int] = field(default_factory=dict)       # band -> count (finite, out of range)
    n_valid: int = 0
    seen_min: float = np.inf
    seen_max: float = -np.inf
    _seen: set = field(default_factory=set)

    @classmethod
    def for_layer(cls, name: str, units: str = "", *, param: str = "FACTORS", dates=None, strict: bool = False,
                  target: bool = False, labels: Optional[Sequence[str]] = None) -> "ValueScreen":
        """The screen of a layer: its range from the table by name and units (RANGES), or the soil-moisture
        target's (0..1 m3/m3) when target=True."""
        if target:
            kind, (lo, hi), unit = "soil moisture", TARGET_RANGE, TARGET_UNIT
        else:
            kind, lo, hi, unit = plausible_range(name, units)
        return cls(name=name, param=param, dates=dates, kind=kind, lo=lo, hi=hi, unit=unit, strict=strict,
                   labels=labels)

    def apply(self, block: np.ndarray, bands: Sequence[int]) -> np.ndarray:
        """block (len(bands), ...) float: bad values become NaN in place, counted per band (each band once,
        however many times it is read). Returns block."""
        for k, b in enumerate(bands):
            a = block[k]
            with np.errstate(invalid="ignore"):
                nan = np.isnan(a)
                bad = ~nan & ~(np.abs(a) < ABS_LIMIT)
                out = ~nan & ~bad & ((a < self.lo) | (a > self.hi))
            b = int(b)
            first = b not in self._seen
            self._seen.add(b)
            nb, no = int(bad.sum()), int(out.sum())
            if first:
                if nb:
                    self.nonfinite[b] = nb
                if no:
                    self.outside[b] = no
                    vals = a[out]
                    self.seen_min, self.seen_max = min(self.seen_min, float(vals.min())), \
                        max(self.seen_max, float(vals.max()))
                self.n_valid += int(a.size - nan.sum() - nb - no)
            if nb or no:
                a[bad | out] = np.nan
        return block

    # ---- reporting
    def _where(self, counts: Dict[int, int], limit: int = 8) -> str:
        items = sorted(counts.items())
        parts = []
        if self.labels is not None:
            parts = [f"station {self.labels[b - 1]}: {n}" for b, n in items[:limit]]
            more = f", ... ({len(items)} stations in all)" if len(items) > limit else ""
            return ", ".join(parts) + more
        for b, n in items[:limit]:
            d = None
            if self.dates is not None and 0 < b <= len(self.dates):
                d = str(np.asarray(self.dates).astype("datetime64[D]")[b - 1])
            parts.append(f"{d} (band {b}): {n}" if d else f"band {b}: {n}")
        more = f", ... ({len(items)} bands in all)" if len(items) > limit else ""
        return ", ".join(parts) + more

    def range_text(self) -> str:
        if self.kind is None:
            return f"|x| < {_fmt(ABS_LIMIT)}"
        return f"the plausible range of {self.kind} ({_fmt(self.lo)}..{_fmt(self.hi)}, {self.unit})"

    def problems(self) -> List[str]:
        out = []
        nb, no = sum(self.nonfinite.values()), sum(self.outside.values())
        if nb:
            out.append(f"{nb} non-finite value(s) (inf, -inf or |x| >= {_fmt(ABS_LIMIT)}) in "
                       f"{self._where(self.nonfinite)}")
        if no:
            out.append(f"{no} value(s) outside {self.range_text()}, from {_fmt(self.seen_min)} to "
                       f"{_fmt(self.seen_max)}, in {self._where(self.outside)}")
        return out

    def report(self, log=None) -> int:
        """Log one warning (or raise in strict mode) when values were removed; return their number.

        A layer whose values are more than half out of range is an error in both modes (wrong units)."""
        nb, no = sum(self.nonfinite.values()), sum(self.outside.values())
        if not nb and not no:
            return 0
        label = f"{self.param}: layer '{self.name}'" if self.param and self.param != self.name else \
            f"{self.param or 'layer'}"
        if no > self.n_valid:
            raise ImplausibleValuesError(
                f"{label}: {no} of its {no + self.n_valid} values lie outside {self.range_text()} (from "
                f"{_fmt(self.seen_min)} to {_fmt(self.seen_max)}): the layer is probably in another unit"
                + (" (soil moisture must be volumetric, m3/m3: divide percent by 100)" if self.kind and
                   self.kind.startswith("soil moisture") else "")
                + "; convert it, or give its units in the file's metadata")
        text = "; ".join(self.problems())
        if self.strict:
            raise ImplausibleValuesError(f"{label} holds {text}. STRICT is on, so this is an error: fix the "
                                         f"layer, or turn STRICT off to read these values as nodata")
        if log is not None:
            log(f"warning: {label} holds {text}: read as nodata")
        return nb + no


def screen_array(values: np.ndarray, screen: ValueScreen, log=None) -> np.ndarray:
    """Screen a (T, N) array of series in place (column n is the series screen.labels[n], e.g. a station),
    count per column, and report (see ValueScreen.report). Returns values."""
    cols = np.asarray(values).T             # a view: NaN written into it lands in values
    screen.apply(cols, range(1, cols.shape[0] + 1))
    screen.report(log)
    return values
