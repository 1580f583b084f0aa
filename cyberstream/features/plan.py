"""Compile saved featuretools definitions into a plan the streaming engine can evaluate.

The EntitySet is ``log -> name_host_pairs -> <connection>`` (``log -> name_host_pairs``
when the connection *is* the pair). Every feature DFS builds on it with the default
aggregation primitives is one of:

* ``TARGET_COLUMN``: an identity column of the connection (``src_name``, ``dest_name``);
* ``TARGET_LOG``: an aggregation over the connection's log rows of a log column
  (``secs``, an attribute, the row itself for COUNT) or of a pair column reached through
  the log (``MODE(log.name_host_pairs.dest_host)``);
* ``TARGET_PAIRS``: an aggregation over the connection's pairs of a pair column
  (``NUM_UNIQUE(name_host_pairs.src_host)``) or of a per-pair aggregation over the pair's
  log rows (``MEAN(name_host_pairs.SUM(log.secs))``).

Primitives compiled: COUNT, SUM, MEAN, MIN, MAX, STD, SKEW, NUM_UNIQUE, MODE. Anything
else (other primitives, ``where``, ``use_previous``, unknown columns) is left to the
featuretools fallback, feature by feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import featuretools as ft
from featuretools.feature_base import AggregationFeature, DirectFeature, IdentityFeature
from featuretools.primitives import Count, Max, Mean, Min, Mode, NumUnique, Skew, Std, Sum

from cyberstream.connections import connection_fields
from cyberstream.schema import ATTRIBUTE_FIELDS, IDENTITY_FIELDS

from .base import output_kind
from .entityset import LOG, PAIR_INDEX, PAIRS, target_dataframe, target_index

PRIMITIVES: dict[type, str] = {
    Count: "count",
    Sum: "sum",
    Mean: "mean",
    Min: "min",
    Max: "max",
    Std: "std",
    Skew: "skew",
    NumUnique: "num_unique",
    Mode: "mode",
}
NUMERIC = {"sum", "mean", "min", "max", "std", "skew"}
CATEGORICAL = {"num_unique", "mode"}

TARGET_COLUMN = "target_column"
TARGET_LOG = "target_log"
TARGET_PAIRS = "target_pairs"


class Unsupported(Exception):
    """A feature the engine cannot compile (it falls back to featuretools)."""


@dataclass(frozen=True)
class LogSource:
    """What a log-level aggregation aggregates: ``rows`` (COUNT), ``secs``, an attribute
    column, or a column of the row's pair (``pair_column``)."""

    kind: str
    column: str | None = None


@dataclass(frozen=True)
class PairValue:
    """A per-pair value: the pair index (COUNT), a pair column, or an aggregation of the
    pair's log rows."""

    kind: str  # "index" | "column" | "log_agg"
    column: str | None = None
    primitive: str | None = None
    source: LogSource | None = None


@dataclass(frozen=True)
class Spec:
    """One compiled feature."""

    name: str
    level: str
    primitive: str | None
    output: str  # "int" | "float" | "category"
    column: str | None = None  # TARGET_COLUMN
    source: LogSource | None = None  # TARGET_LOG
    pair_value: PairValue | None = None  # TARGET_PAIRS
    #: vocabulary (column) the codes of a categorical output come from
    vocab: str | None = None


@dataclass
class Plan:
    specs: list[Spec] = field(default_factory=list)
    fallback: list[ft.FeatureBase] = field(default_factory=list)
    fallback_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def attributes(self) -> set[str]:
        """Attribute columns whose per-value window counts the plan needs."""
        out = set()
        for s in self.specs:
            for src in (s.source, s.pair_value.source if s.pair_value else None):
                if src is not None and src.kind == "attr":
                    out.add(src.column)
        return out

    def needs(self, primitive: str, *, secs_only: bool = True) -> bool:
        """Whether any secs aggregation (at pair or connection level) uses ``primitive``."""
        for s in self.specs:
            if s.level == TARGET_LOG and s.primitive == primitive and s.source.kind == "secs":
                return True
            pv = s.pair_value
            if pv is not None and pv.kind == "log_agg" and pv.primitive == primitive and pv.source.kind == "secs":
                return True
        return False


class Compiler:
    """Turns featuretools feature objects into :class:`Spec` for one connection kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.target = target_dataframe(kind)
        self.index = target_index(kind)
        self.pair_is_target = self.target == PAIRS
        #: columns the engine knows for every pair / connection, from the event's identity
        self.pair_columns = {*IDENTITY_FIELDS, PAIR_INDEX, self.index}
        self.target_columns = {*connection_fields(kind), self.index}
        if self.pair_is_target:
            self.target_columns = self.pair_columns

    def compile(self, feature: ft.FeatureBase) -> Spec:
        name = feature.get_name()
        if feature.number_output_features != 1:
            raise Unsupported("multi-output feature")
        out = output_kind(feature)
        if out not in ("int", "float", "category"):
            raise Unsupported(f"output type {out}")
        if feature.dataframe_name != self.target:
            raise Unsupported(f"feature of dataframe {feature.dataframe_name}, not {self.target}")
        if isinstance(feature, IdentityFeature):
            if feature.column_name not in self.target_columns:
                raise Unsupported(f"unknown column {feature.column_name}")
            return Spec(name, TARGET_COLUMN, None, out, column=feature.column_name, vocab=feature.column_name)
        if not isinstance(feature, AggregationFeature):
            raise Unsupported(f"{type(feature).__name__} on the target")
        prim = self._primitive(feature)
        base = feature.base_features[0]
        if base.dataframe_name == LOG:
            source = self._log_source(base)
            self._check_input(prim, source.kind in ("secs",) if prim in NUMERIC else True, source)
            vocab = self._source_vocab(source) if prim == "mode" else None
            return Spec(name, TARGET_LOG, prim, out, source=source, vocab=vocab)
        if base.dataframe_name == PAIRS and not self.pair_is_target:
            pv = self._pair_value(base)
            vocab = self._pair_vocab(pv) if prim == "mode" else None
            return Spec(name, TARGET_PAIRS, prim, out, pair_value=pv, vocab=vocab)
        raise Unsupported(f"aggregation over {base.dataframe_name}")

    @staticmethod
    def _primitive(feature: AggregationFeature) -> str:
        if feature.where is not None:
            raise Unsupported("where clause")
        if feature.use_previous is not None:
            raise Unsupported("use_previous")
        prim = PRIMITIVES.get(type(feature.primitive))
        if prim is None:
            raise Unsupported(f"primitive {type(feature.primitive).__name__}")
        if prim == "mean" and not getattr(feature.primitive, "skipna", True):
            raise Unsupported("MEAN with skipna=False")
        return prim

    @staticmethod
    def _check_input(prim: str, ok: bool, what: object) -> None:
        if not ok:
            raise Unsupported(f"{prim} of {what}")

    def _log_source(self, base: ft.FeatureBase) -> LogSource:
        if isinstance(base, IdentityFeature):
            col = base.column_name
            if col == "log_id":
                return LogSource("rows")
            if col == "secs":
                return LogSource("secs")
            if col in ATTRIBUTE_FIELDS:
                return LogSource("attr", col)
            raise Unsupported(f"log column {col}")
        if isinstance(base, DirectFeature):
            parent = base.base_features[0]
            if (
                isinstance(parent, IdentityFeature)
                and parent.dataframe_name == PAIRS
                and parent.column_name in self.pair_columns
                and len(base.relationship_path) == 1
            ):
                return LogSource("pair_column", parent.column_name)
        raise Unsupported(f"log-level base {base.get_name()}")

    def _pair_value(self, base: ft.FeatureBase) -> PairValue:
        if isinstance(base, IdentityFeature):
            if base.column_name == PAIR_INDEX:
                return PairValue("index")
            if base.column_name in self.pair_columns:
                return PairValue("column", column=base.column_name)
            raise Unsupported(f"pair column {base.column_name}")
        if isinstance(base, AggregationFeature) and base.base_features[0].dataframe_name == LOG:
            prim = self._primitive(base)
            source = self._log_source(base.base_features[0])
            if prim in NUMERIC and source.kind != "secs":
                raise Unsupported(f"{prim} of {source}")
            if prim in CATEGORICAL and source.kind in ("secs", "rows"):
                raise Unsupported(f"{prim} of {source}")
            if prim == "mode" and source.kind == "pair_column":
                raise Unsupported("MODE of a pair's own column over its rows")
            return PairValue("log_agg", primitive=prim, source=source)
        raise Unsupported(f"pair-level base {base.get_name()}")

    @staticmethod
    def _source_vocab(source: LogSource) -> str:
        if source.kind in ("attr", "pair_column"):
            return source.column
        raise Unsupported(f"MODE of {source}")

    def _pair_vocab(self, pv: PairValue) -> str:
        if pv.kind == "column":
            return pv.column
        if pv.kind == "log_agg" and pv.primitive == "mode":
            return self._source_vocab(pv.source)
        raise Unsupported(f"MODE of {pv}")


def compile_plan(feature_defs: Sequence[ft.FeatureBase], kind: str) -> Plan:
    """Compile every feature; the ones that do not compile go to ``plan.fallback``."""
    compiler = Compiler(kind)
    plan = Plan()
    for f in feature_defs:
        try:
            spec = compiler.compile(f)
        except Unsupported as exc:
            plan.fallback.append(f)
            plan.fallback_reasons[f.get_name()] = str(exc)
            continue
        # Numeric primitives need numeric inputs; categorical ones categorical inputs.
        if spec.level == TARGET_PAIRS and spec.primitive in NUMERIC:
            pv = spec.pair_value
            if pv.kind != "log_agg" or pv.primitive == "mode":
                plan.fallback.append(f)
                plan.fallback_reasons[f.get_name()] = f"{spec.primitive} of a categorical pair value"
                continue
        if spec.level == TARGET_PAIRS and spec.primitive in CATEGORICAL:
            pv = spec.pair_value
            if pv.kind == "log_agg" and pv.primitive != "mode":
                plan.fallback.append(f)
                plan.fallback_reasons[f.get_name()] = f"{spec.primitive} of a numeric pair value"
                continue
        if spec.level == TARGET_LOG and spec.primitive in CATEGORICAL and spec.source.kind not in ("attr", "pair_column"):
            plan.fallback.append(f)
            plan.fallback_reasons[f.get_name()] = f"{spec.primitive} of {spec.source}"
            continue
        plan.specs.append(spec)
    return plan
