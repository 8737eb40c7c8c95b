"""sentence-transformers' directory layout: what an embedding model's pooling and normalisation are, and how to
write a result that ``SentenceTransformer(OUT)`` loads.

A sentence-transformers model is a transformers checkpoint at the directory's root plus ``modules.json``, which
chains it to a ``Pooling`` module (``1_Pooling/config.json``) and optionally ``Normalize``. axformer changes only
the transformer, so the other modules' files are carried over as they were written (byte for byte: whatever the
sentence-transformers version that wrote them reads, it reads again).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from axformer.errors import AxformerError

MODULES_FILE = "modules.json"
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(_LEGACY_POOLING.values())
_ROOT_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class SentenceLayout:
    """The parts of a sentence-transformers model axformer runs itself: pooling and normalisation."""

    pooling: str
    normalize: bool
    max_seq_length: int | None
    source: str | None = None  # the directory the module files are copied from
    module_dirs: tuple[str, ...] = field(default=())  # sub-directories of the non-transformer modules


def is_sentence_model(path: str | os.PathLike) -> bool:
    return (Path(path) / MODULES_FILE).is_file()


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AxformerError(f"cannot read {path}: {exc}") from None


def _pooling_mode(cfg: dict, where: Path) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:
        active = [m for key, m in _LEGACY_POOLING.items() if cfg.get(key)]
        mode = active if len(active) != 1 else active[0]
    if isinstance(mode, list | tuple):
        mode = mode[0] if len(mode) == 1 else mode
    if not isinstance(mode, str) or mode not in POOLING_MODES:
        raise AxformerError(
            f"{where} asks for pooling {mode!r}; axformer runs one of {', '.join(POOLING_MODES)} (not a combination)"
        )
    return mode


def read_layout(path: str | os.PathLike) -> SentenceLayout:
    """The pooling and normalisation of the sentence-transformers model in ``path``.

    Only the chain Transformer (at the root) -> Pooling -> [Normalize] is accepted: a Dense projection or any
    other module would be dropped silently by a runtime that does not know it, so it is refused by name.
    """
    root = Path(path)
    modules_file = root / MODULES_FILE
    if not modules_file.is_file():
        raise AxformerError(
            f"{root} is not a sentence-transformers model (no {MODULES_FILE}); --embedding expects a directory "
            "written by SentenceTransformer.save (config.json, weights, modules.json, 1_Pooling/)"
        )
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not modules:
        raise AxformerError(f"{modules_file} lists no modules; expected Transformer, Pooling and optionally Normalize")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[0] != "Transformer" or modules[0].get("path", "") not in ("", "."):
        raise AxformerError(
            f"{modules_file}: the first module is {kinds[0]!r} at {modules[0].get('path')!r}; expected the "
            "Transformer at the directory's root"
        )
    unsupported = [k for k in kinds[1:] if k not in ("Pooling", "Normalize")]
    if unsupported or "Pooling" not in kinds:
        what = f"module {unsupported[0]!r}" if unsupported else "no Pooling module"
        raise AxformerError(
            f"{modules_file} has {what}; axformer supports Transformer -> Pooling -> [Normalize] models"
        )
    pooling_dir = root / modules[kinds.index("Pooling")].get("path", "1_Pooling")
    pooling_cfg = _read_json(pooling_dir / "config.json")
    bert_cfg = root / "sentence_bert_config.json"
    max_len = _read_json(bert_cfg).get("max_seq_length") if bert_cfg.is_file() else None
    return SentenceLayout(
        pooling=_pooling_mode(pooling_cfg, pooling_dir / "config.json"),
        normalize="Normalize" in kinds,
        max_seq_length=int(max_len) if max_len else None,
        source=str(root.resolve()),
        module_dirs=tuple(m["path"] for m in modules[1:] if m.get("path")),
    )


def write_layout(layout: SentenceLayout, directory: str | os.PathLike, max_seq_length: int | None = None) -> None:
    """Beside a saved transformer: the module files of the model it came from, so that sentence-transformers
    loads ``directory`` as the same pipeline. ``max_seq_length`` overrides the recorded one (trimmed positions)."""
    if layout.source is None:
        raise AxformerError("this embedding model records no sentence-transformers directory to copy modules from")
    src, out = Path(layout.source), Path(directory)
    for name in _ROOT_FILES:
        if (src / name).is_file() and (src / name).resolve() != (out / name).resolve():
            shutil.copy2(src / name, out / name)
    for sub in layout.module_dirs:
        if (src / sub).resolve() == (out / sub).resolve():
            continue
        if (src / sub).is_dir():
            shutil.copytree(src / sub, out / sub, dirs_exist_ok=True)
        else:  # Normalize has no files; sentence-transformers still expects its directory
            (out / sub).mkdir(parents=True, exist_ok=True)
    if max_seq_length is not None:
        cfg_file = out / "sentence_bert_config.json"
        cfg = _read_json(cfg_file) if cfg_file.is_file() else {}
        if cfg.get("max_seq_length") != max_seq_length:
            cfg["max_seq_length"] = max_seq_length
            cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
