"""Readable views of a significance analysis: PNG heatmaps and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from axformer.surgery.components import layer_name

HEATMAP_FILES = {"heads": "heatmap_heads.png", "groups": "heatmap_ffn_groups.png", "blocks": "blocks.png"}
SCORE_FILES = {"heads": "gradient_heads.png", "groups": "gradient_ffn_groups.png", "layers": "layer_scores.png"}


def ablation_grids(sig: dict) -> dict[str, np.ndarray]:
    """Δ held-out loss of each single removal, as (layers x heads), (layers x groups) and (layers x [layer, attn,
    ffn]).
    """
    st = sig["structure"]
    L, H, G = len(st["layers"]), st["num_heads"], sig["config"]["groups"]
    grids = {"heads": np.full((L, H), np.nan), "groups": np.full((L, G), np.nan), "blocks": np.full((L, 3), np.nan)}
    for row in sig.get("ablation", {}).get("rows", []):
        k, l, i = row["kind"], row["layer"], row["index"]
        if k == "head":
            grids["heads"][l, i] = row["delta_loss"]
        elif k == "group":
            grids["groups"][l, i] = row["delta_loss"]
        elif k in ("layer", "attn", "ffn"):
            grids["blocks"][l, ("layer", "attn", "ffn").index(k)] = row["delta_loss"]
    return grids


def _heatmap(
    grid: np.ndarray,
    xlabels: list[str],
    title: str,
    path: Path,
    log_scale: bool,
    signed: bool = True,
    label: str | None = None,
) -> None:
    """One cell per layer and unit, every cell annotated.

    Signed maps (ablation Δ loss) are diverging and centred on zero (red: removal hurts, blue: removal helps);
    blocks and layers span orders of magnitude, so they get a symmetric log scale, while heads and neuron groups
    are shown linearly in units of 1e-3 loss so that their small differences stay readable. Unsigned maps
    (gradient importance) use a sequential scale from zero.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, SymLogNorm

    L, W = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * W + 1.8), max(2.4, 0.36 * L + 1.2)), dpi=100)
    finite = grid[np.isfinite(grid)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    scale = 1e3 if signed and not log_scale else 1.0
    if not signed:
        norm, cmap, fmt = Normalize(0.0, vmax), "Reds", (lambda v: f"{v:.0f}" if v >= 10 else f"{v:.2g}")
    elif log_scale:
        norm, cmap, fmt = (
            SymLogNorm(linthresh=max(vmax / 100, 1e-5), vmin=-vmax, vmax=vmax),
            "RdBu_r",
            (lambda v: f"{v:+.3f}"),
        )
    else:
        norm, cmap, fmt = Normalize(-vmax * scale, vmax * scale), "RdBu_r", (lambda v: f"{v * scale:+.1f}")
    im = ax.imshow(np.ma.masked_invalid(grid * scale), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(W), xlabels, fontsize=7)
    ax.set_yticks(range(L), [layer_name(i) for i in range(L)], fontsize=8)
    ax.set_title(title, fontsize=9)
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(c, r, fmt(v), ha="center", va="center", fontsize=7 if log_scale else 6)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    default = (
        "Δ held-out loss when removed" + ("" if log_scale else " (x1e-3)") + "\n(red: matters, blue: removal helps)"
    )
    cb.set_label(label or default, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _layer_scores_plot(sig: dict, path: Path) -> None:
    """Per-layer scores side by side: gradient importance of layer/attention/FFN gates and 1 - cosine similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, sig[name]) for name in ("gradient", "similarity") if sig.get(name)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 2.8), dpi=100, squeeze=False)
    for ax, (name, scores) in zip(axes[0], panels):
        L = len(scores["layer"])
        x = np.arange(L)
        for j, part in enumerate(("layer", "attn", "ffn")):
            ax.bar(x + (j - 1) * 0.27, np.nan_to_num(np.asarray(scores[part], dtype=float)), width=0.27, label=part)
        ax.set_xticks(x, [layer_name(i) for i in range(L)], fontsize=8)
        ax.set_title(
            "gradient importance |dL/dgate|" if name == "gradient" else "1 - cosine(input, output)", fontsize=9
        )
        ax.tick_params(labelsize=7)
        if name == "gradient":
            ax.set_yscale("log")  # a last layer's gate gradient can be 10x the others'
        ax.legend(fontsize=7)
    fig.suptitle("Per-layer scores (higher: matters more)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_heatmaps(sig: dict, directory: Path) -> list[Path]:
    """Every view the analysis supports: ablation maps (measured removals), gradient maps, per-layer scores."""
    out = []
    if "ablation" in sig:
        grids = ablation_grids(sig)
        H, G = grids["heads"].shape[1], grids["groups"].shape[1]
        for key, labels, title in (
            ("heads", [f"h{i}" for i in range(H)], "Removing one attention head"),
            ("groups", [f"g{i}" for i in range(G)], f"Removing one FFN neuron group (1/{G} of the FFN)"),
            ("blocks", ["layer", "attn", "ffn"], "Removing a whole layer or block"),
        ):
            path = directory / HEATMAP_FILES[key]
            _heatmap(grids[key], labels, title, path, log_scale=key == "blocks")
            out.append(path)
    grad = sig.get("gradient")
    if grad:
        heads, groups = np.asarray(grad["heads"], dtype=float), np.asarray(grad["groups"], dtype=float)
        norm = ", L2-normalised per layer" if grad.get("normalized_heads") else ""
        for key, grid, title in (
            ("heads", heads, f"Gradient importance of each attention head{norm}"),
            ("groups", groups, f"Gradient importance of each FFN neuron group (1/{groups.shape[1]} of the FFN)"),
        ):
            path = directory / SCORE_FILES[key]
            _heatmap(
                grid,
                [f"{'h' if key == 'heads' else 'g'}{i}" for i in range(grid.shape[1])],
                title,
                path,
                log_scale=False,
                signed=False,
                label="sum over held-out batches of |dL/dgate|\n(higher: matters more)",
            )
            out.append(path)
    if grad or sig.get("similarity"):
        path = directory / SCORE_FILES["layers"]
        _layer_scores_plot(sig, path)
        out.append(path)
    return out


def _fmt(x: float | None, spec: str = "+.4f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def summary_markdown(sig: dict) -> str:
    ref = sig["reference"]
    main = sig["task"]["main_metric"]
    split = sig["split"]
    lines = [
        f"# Significance analysis: {sig['model']} on {sig['task']['display_name']}",
        "",
        f"Held-out split: {split['used']} of {split['full_size']} held-out training examples "
        f"({split['fraction']:.0%} of train, seed {split['seed']}); the dev set is not used.",
        f"Unchanged model: held-out loss {ref['mean_loss']:.4f}, {main} {ref['metrics'][main]:.2f}.",
        "",
    ]
    for w in sig.get("warnings", []):
        lines += [f"> Warning: {w}", ""]
    abl = sig.get("ablation")
    if abl:
        rows = abl["rows"]
        lines += [
            f"## Ablation ({len(rows)} single removals, {abl['seconds']:.0f} s)",
            "",
            "Δ loss > 0: the component matters; Δ loss < 0: removing it lowers the held-out loss. "
            '"not worse" is the fraction of examples whose loss does not rise (AxFormer accepts a removal only if it '
            "lowers the mean loss and this fraction exceeds 0.5).",
            "",
        ]
        for f in HEATMAP_FILES.values():
            lines.append(f"![{f}]({f})")
        lines.append("")
        helps = sorted((r for r in rows if r["delta_loss"] < 0), key=lambda r: r["delta_loss"])
        top = sorted(rows, key=lambda r: -r["delta_loss"])[:10]
        lines += [
            "### Most significant (largest loss increase when removed)",
            "",
            f"| component | Δ loss | Δ {main} | not worse |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['component']} | {r['delta_loss']:+.4f} | {r['delta_metric']:+.2f} | {r['not_worse_fraction']:.2f} |"
            for r in top
        ]
        lines += ["", f"### Removals that lower the held-out loss ({len(helps)})", ""]
        if helps:
            lines += [f"| component | Δ loss | Δ {main} | not worse | AxFormer would accept |", "|---|---|---|---|---|"]
            lines += [
                f"| {r['component']} | {r['delta_loss']:+.4f} | {r['delta_metric']:+.2f} | "
                f"{r['not_worse_fraction']:.2f} | {'yes' if r['not_worse_fraction'] > 0.5 else 'no'} |"
                for r in helps[:15]
            ]
        else:
            lines.append("None: every single removal raises the held-out loss.")
        lines.append("")
    sim = sig.get("similarity")
    grad = sig.get("gradient")
    if sim or grad:
        L = len(sig["structure"]["layers"])
        lines += ["## Per-layer scores", ""]
        lines += [f"![{f}]({f})" for key, f in SCORE_FILES.items() if grad or key == "layers"] + [""]
        lines += [
            "| layer | 1-cos layer | 1-cos attn | 1-cos ffn | grad attn | grad ffn | grad layer |",
            "|---|---|---|---|---|---|---|",
        ]
        for i in range(L):
            s = [sim[k][i] if sim else None for k in ("layer", "attn", "ffn")]
            g = [grad[k][i] if grad else None for k in ("attn", "ffn", "layer")]
            lines.append(
                f"| L{i} | "
                + " | ".join(_fmt(v, ".4f") for v in s)
                + " | "
                + " | ".join(_fmt(v, ".3g") for v in g)
                + " |"
            )
        lines.append("")
    q = sig.get("quantization")
    if q:
        rows = sorted(q["rows"], key=lambda r: (-r["bits"], -r["delta_loss"]))
        lines += [
            f"## Quantization sensitivity ({q['seconds']:.0f} s)",
            "",
            f"| weight | bits | Δ loss | Δ {main} |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['name']} | {r['bits']} | {r['delta_loss']:+.5f} | {r['delta_metric']:+.2f} |" for r in rows]
        lines.append("")
    t = sig["timings"]
    lines += ["## Cost", "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in t.items()] + [""]
    return "\n".join(lines)
