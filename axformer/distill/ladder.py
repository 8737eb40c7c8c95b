"""Smaller students tried before the recipe's own: the student's size searched under the tolerance.

FastFormers fixes the student's size by hand. Which size keeps a task within a point is not known before
training it: on MiniLM a three-layer student of STS-B kept its Pearson (-0.14 at 2.12x ONNX Runtime int8 of the
original) where every three- or four-layer student of MRPC lost 2-4 F1 (docs/promises.md, sessions 26-27). So
the recipe can try smaller students first, smallest first: each is distilled (and pruned and distilled again,
when it names heads or FFN neurons) and then judged against the teacher, on the deciding examples and, in the
pipeline, by the certificate's check of its exported artifact; the first one that holds is the recipe's model,
and when none does the recipe's own student is trained as if nothing had been tried. A rung costs a whole
distillation, so the time budget's plan keeps a rung only when the rung and everything after it fit
(``axformer.distill.budget.plan_ladder``), and says which it dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from axformer.errors import AxformerError

SPEC_HELP = "LAYERS[:HEADS[:FFN]], e.g. 3 (three layers spread evenly), 3:8:768 or 0,2,5"


@dataclass
class StudentRung:
    """One smaller student: its sizes as ``--student-layers``/``--heads``/``--ffn`` take them, and the
    distillation settings it trains with where they differ from the recipe's (a student far smaller than the
    teacher moves further from its start: STS-B's three layers kept the point at learning rate 3e-4 with the gold
    scores beside the teacher's, benchmarks/experiments/pair_students.md)."""

    layers: str | None = None
    heads: int | None = None
    ffn: int | None = None
    learning_rate: float | None = None  # None: the recipe's
    hard_weight: float | None = None  # None: the recipe's

    def validate(self) -> None:
        if self.layers is None and self.heads is None and self.ffn is None:
            raise AxformerError(f"a student to try names no size; expected {SPEC_HELP}")
        for name, value in (("heads", self.heads), ("ffn", self.ffn)):
            if value is not None and value < 1:
                raise AxformerError(f"a student to try keeps {value} {name}; expected at least 1")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise AxformerError(f"a student to try has learning rate {self.learning_rate}; expected a positive one")
        if self.hard_weight is not None and self.hard_weight < 0:
            raise AxformerError(f"a student to try has hard weight {self.hard_weight}; expected 0 or more")

    @property
    def label(self) -> str:
        """The rung's stage directory under the recipe's ``stages``: ``trial-layers-3``,
        ``trial-layers-0_2_5-heads-8``."""
        parts = [
            f"{name}-{str(value).replace(',', '_')}"
            for name, value in (("layers", self.layers), ("heads", self.heads), ("ffn", self.ffn))
            if value is not None
        ]
        return "trial-" + "-".join(parts)

    def describe(self) -> str:
        sizes = ", ".join(
            f"{name} {value}"
            for name, value in (("layers", self.layers), ("heads", self.heads), ("ffn", self.ffn))
            if value is not None
        )
        extra = []
        if self.learning_rate is not None:
            extra.append(f"lr {self.learning_rate:g}")
        if self.hard_weight is not None:
            extra.append(f"hard weight {self.hard_weight:g}")
        return sizes + (f" ({', '.join(extra)})" if extra else "")

    def sizes_of(self, config):
        """``config`` (a ``RecipeConfig``) with this rung's sizes and distillation settings, and no rungs."""
        d = config.distill
        distill = replace(
            d,
            learning_rate=d.learning_rate if self.learning_rate is None else self.learning_rate,
            hard_weight=d.hard_weight if self.hard_weight is None else self.hard_weight,
        )
        return replace(config, student_layers=self.layers, heads=self.heads, ffn=self.ffn, distill=distill, trials=[])


def parse_rung(spec: str) -> StudentRung:
    """``LAYERS[:HEADS[:FFN]]`` (``-`` or empty: that size unchanged), as ``--try-student`` takes it."""
    parts = [p.strip() for p in str(spec).split(":")]
    if len(parts) > 3 or not parts[0] and len(parts) == 1:
        raise AxformerError(f"--try-student {spec!r}; expected {SPEC_HELP}")
    parts += [""] * (3 - len(parts))

    def count(text: str, name: str) -> int | None:
        if text in ("", "-"):
            return None
        try:
            return int(text)
        except ValueError:
            raise AxformerError(
                f"--try-student {spec!r}: {name} {text!r} is not a number; expected {SPEC_HELP}"
            ) from None

    rung = StudentRung(
        layers=None if parts[0] in ("", "-") else parts[0], heads=count(parts[1], "heads"), ffn=count(parts[2], "FFN")
    )
    rung.validate()
    return rung
