"""The search's report: original vs optimized on the held-out split and the dev set(s), structure, size,
FLOPs and latency measured in one run, as ``report.json`` and ``report.md``."""

from __future__ import annotations

from pathlib import Path

from axformer.data.batching import encode
from axformer.evaluation import score
from axformer.inference import run_model
from axformer.models.loading import is_local
from axformer.runtime.timing import measure_latency
from axformer.search.result import SearchReport, SearchSummary
from axformer.search.trials import Trials
from axformer.surgery.components import layer_name
from axformer.surgery.prune import count_parameters, current_structure
from axformer.utils.config import to_mapping
from axformer.utils.device import run_environment


def weights_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def build_report(
    model,
    ctx,
    optimized,
    state,
    config,
    trials: Trials,
    search_info,
    search_seconds,
    total_seconds,
    resumed,
    work: Path,
) -> dict:
    spec = ctx.data.spec
    original = ctx.model
    original.eval()
    results = {}
    for name, net in (("original", original), ("optimized", optimized)):
        entry = {
            "heldout": score(
                spec, ctx.heldout.labels, run_model(net, ctx.encoded, spec.is_regression, config.batch_size, ctx.device)
            ).to_dict()
        }
        if ctx.confirmation is not None:  # the part of the held-out split no decision saw
            entry["confirmation"] = score(
                spec,
                ctx.confirmation.labels,
                run_model(net, ctx.confirmation_encoded, spec.is_regression, config.batch_size, ctx.device),
            ).to_dict()
        for dev_name, dev_split in ctx.data.dev.items():
            if len(dev_split) and dev_split.is_labelled:
                entry[dev_name] = score(
                    spec,
                    dev_split.labels,
                    run_model(
                        net,
                        encode(ctx.tokenizer, dev_split, ctx.record.max_seq_length, separate=spec.is_embedding),
                        spec.is_regression,
                        config.batch_size,
                        ctx.device,
                    ),
                ).to_dict()
        s = current_structure(net)
        entry.update(
            {"parameters": count_parameters(net), "flops_per_token": s.flops_per_token(128), "structure": s.summary()}
        )
        results[name] = entry
    results["original"]["size_bytes"] = (weights_size(Path(model)) or None) if is_local(model) else None
    results["optimized"]["size_bytes"] = weights_size(work)
    dev_split = next(iter(ctx.data.dev.values()))
    lat = measure_latency(  # an embedding model: one text per request
        {"original": original, "optimized": optimized},
        encode(ctx.tokenizer, dev_split, ctx.record.max_seq_length, separate=spec.is_embedding).ungrouped(),
        config.latency_examples,
        ctx.device,
    )
    for k in lat:
        results[k]["latency"] = lat[k]
    accepted = [d for d in trials.decisions if d.accepted]
    replayed = sum(d.from_log for d in trials.decisions)
    summary = SearchSummary(
        **search_info,
        trials=trials.count,
        accepted=len(accepted),
        from_log=replayed,
        # a resumed search's time includes the trials it replayed (their evaluation time, as logged when they ran)
        seconds=search_seconds + sum(float(r.get("seconds", 0.0)) for r in trials.logged[:replayed]),
        seconds_this_run=search_seconds,
        resumed=resumed,
    )
    return SearchReport.from_dict(
        {
            "model": str(model),
            "task": {"name": spec.name, "display_name": spec.display_name, "main_metric": spec.main_metric},
            "goal": config.goal,
            "config": to_mapping(config),
            "split": ctx.describe_split(),
            "removed": list(state["removed"]),
            "attention": dict(state["attention"]),
            "search": to_mapping(summary),
            "results": results,
            "speedup_batch1": lat["original"]["batch1_ms"] / lat["optimized"]["batch1_ms"],
            "speedup_batch32": lat["original"]["batch32_ms_per_example"] / lat["optimized"]["batch32_ms_per_example"],
            "total_seconds": total_seconds,
            "warnings": list(ctx.warnings),
            "environment": run_environment(ctx.device),
        }
    )


def report_markdown(r: SearchReport) -> str:
    main = r.task.main_metric
    o, p = r.original, r.optimized

    def m(scores, metric=main):
        return "-" if scores is None else f"{scores.metrics[metric]:.2f}"

    def size(b):
        return "-" if not b else f"{b / 2**20:.1f} MiB"

    s = r.search
    flops_ratio = (
        f"{o.flops_per_token / p.flops_per_token:.2f}x fewer" if p.flops_per_token else "no encoder layer left"
    )
    lines = [
        f"# axformer optimize: {r.model} on {r.task.display_name} (goal: {r.goal})",
        "",
        f"Decisions used {r.split['used']} held-out training examples only{_confirmation_note(r)}; "
        f"the dev set only reports. Rule: {s.rule}.",
        f"Search: {s.trials} trials ({s.accepted} accepted, {s.from_log} replayed from a resumed log) in "
        f"{s.seconds:.0f} s; whole run {r.total_seconds:.0f} s.",
        "",
        "| | original | optimized | ratio |",
        "|---|---|---|---|",
        f"| held-out {main} | {m(o.heldout)} | {m(p.heldout)} | |",
        f"| held-out loss | {o.heldout.loss:.4f} | {p.heldout.loss:.4f} | |",
    ]
    if o.confirmation is not None and p.confirmation is not None:
        for metric in o.confirmation.metrics:
            lines.append(f"| confirmation {metric} | {m(o.confirmation, metric)} | {m(p.confirmation, metric)} | |")
    for d, scores in o.dev.items():
        for metric in scores.metrics:
            lines.append(f"| {d} {metric} | {m(scores, metric)} | {m(p.dev.get(d), metric)} | |")
    lines += [
        f"| parameters | {o.parameters / 1e6:.2f} M | {p.parameters / 1e6:.2f} M | "
        f"{o.parameters / p.parameters:.2f}x smaller |",
        f"| size on disk | {size(o.size_bytes)} | {size(p.size_bytes)} | |",
        f"| FLOPs/token (encoder, 128 tokens) | {o.flops_per_token / 1e6:.1f} M | "
        f"{p.flops_per_token / 1e6:.1f} M | {flops_ratio} |",
        f"| latency, batch 1, dev texts | {o.latency.batch1_ms:.2f} ms | "
        f"{p.latency.batch1_ms:.2f} ms | {r.speedup_batch1:.2f}x faster |",
        f"| time per example, batch 32 | {o.latency.batch32_ms_per_example:.2f} ms | "
        f"{p.latency.batch32_ms_per_example:.2f} ms | {r.speedup_batch32:.2f}x faster |",
        "",
        "Latency: PyTorch fp32 on this machine, both models measured in the same run (medians of 5 "
        "interleaved rounds).",
        "",
        f"Removed ({len(r.removed)}): {', '.join(r.removed) or 'nothing'}.",
        "Approximate attention: "
        + (
            ", ".join(
                f"{layer_name(int(k))} ({'top' if v.get('mode', 'topk') == 'topk' else 'sign-matching top'}-{v['k']})"
                for k, v in r.attention.items()
            )
            or "no layer"
        )
        + ".",
        "",
        "Per-layer structure (heads/FFN neurons, '-' removed): "
        + " ".join("-" if l.get("removed") else f"{l['heads']}/{l['ffn']}" for l in p.structure),
    ]
    if r.recovery:
        rec = r.recovery
        how = {
            "continue": "re-fine-tuned from the searched weights",
            "pretrained": "re-fine-tuned from the pre-trained checkpoint with the found structure (AxFormer)",
            "distill": "distilled from the original model (FastFormers)",
        }[rec["mode"]]
        reverted = r.certification is not None and not r.certification.shipped_recovered
        if not rec.get("kept", True):
            after = rec["heldout_after"]["metrics"][main]
            shown = (
                f"the searched model: the recovered one scored {after:.2f} on the same examples, no better, and was "
                "not kept"
            )
        elif reverted:
            shown = "the searched model: the recovered one failed its certificate"
        else:
            shown = "the recovered model"
        lines += [
            "",
            f"Recovery: {how} in {rec['seconds']:.0f} s; held-out {main} before recovery "
            f"{rec['heldout_before']['metrics'][main]:.2f} (the table shows {shown}).",
        ]
        if rec.get("budget"):
            lines[-1] += " " + budget_sentence(rec)
        qat = rec.get("config", {})
        if qat.get("qat_block_size") or qat.get("qat_table_block_size"):
            parts = [f"matrices in blocks of {qat['qat_block_size']}"] if qat.get("qat_block_size") else []
            if qat.get("qat_table_block_size"):
                parts.append(f"embedding tables in blocks of {qat['qat_table_block_size']}")
            lines[-1] += (
                " Quantization-aware: " + " and ".join(parts) + " rounded to the int4 artifact's grid in training; "
                "the weights are saved on it, so the certified model computes what the int4 export computes."
            )
        elif qat.get("qat_int8"):
            lines[-1] += (
                " Quantization-aware: every matrix product's weights and inputs rounded as dynamic int8 rounds them "
                "in training, so the distillation wins back the int8 artifact's rounding too."
            )
        if rec.get("student"):
            st = rec["student"]
            fate = "it ships" if st["kept"] else "it failed its certificate and was undone"
            kept = f"layer{'s' if len(st['layers']) > 1 else ''} {', '.join(map(str, st['layers']))}"
            lines += [
                "",
                f"Student (--student-layers): the teacher's {kept} kept after the search and distilled; {fate}.",
            ]
    for note in s.attention_notes:
        lines += ["", f"Approximate attention: {note}."]
    if s.units == "coarse":
        lines += [
            "",
            "Units searched: whole layers and blocks only (--units auto with distillation): single heads and FFN "
            "groups change fewer answers than the deciding examples can resolve.",
        ]
    if s.cost_model is not None:
        where = {"onnxruntime-int8": " (latency timed as the int8 artifact runs: over ONNX Runtime int8 of the "
                 "original)"}.get(s.cost_model.get("runtime", "pytorch"), "")  # fmt: skip
        lines += [
            "",
            f"Predicted {'speed-up' if r.goal == 'speed' else 'size reduction'} from the "
            f"calibrated cost model{where if r.goal == 'speed' else ''}: {s.predicted_ratio:.2f}x.",
        ]
    lines += certification_lines(r) + fidelity_lines(r)
    for w in r.warnings:
        lines += ["", f"> Warning: {w}"]
    return "\n".join(lines) + "\n"


def budget_sentence(rec: dict) -> str:
    """The recovery's training data next to the original's: a model that saw more data is no proof of the method."""
    b, o = rec["budget"], rec.get("original_budget")
    labels = "the original's outputs as targets" if rec["mode"] == "distill" else "gold labels"
    hard = (rec.get("config") or {}).get("hard_weight") or 0
    if rec["mode"] == "distill" and hard:
        labels += f", and the training examples' gold labels at weight {hard:g}"
    windows = f" plus {b['windows']} later windows of long ones" if b.get("windows") else ""
    if b.get("augmented_texts"):
        windows += f" plus {b['augmented_texts']} perturbed copies of them"
    if b.get("calibration_texts"):
        windows += f" plus {b['calibration_texts']} unlabelled calibration texts"
    said = f"It trained on {b['examples']} training examples{windows} x {b['epochs']:g} epochs ({labels})"
    if rec.get("stopped_by_time"):
        minutes = ((rec.get("config") or {}).get("max_seconds") or 0) / 60
        said += f", stopped by --recover-max-minutes {minutes:g} before its last step (best checkpoint so far kept)"
    if not o:
        return said + "; the original's training budget is not recorded (it was not fine-tuned by axformer)."
    if o["examples"] < b["examples"]:
        return (
            said + f"; the original was fine-tuned on only {o['examples']} examples x {o['epochs']:g} epochs, "
            "so part of any gain may come from the extra data."
        )
    return said + f"; the original was fine-tuned on {o['examples']} examples x {o['epochs']:g} epochs."


def _confirmation_note(r: SearchReport) -> str:
    c = (r.split or {}).get("confirmation")
    return "" if not c else f" ({c['used']} more held-out examples, never used by a decision, certify the result)"


def certification_lines(r: SearchReport) -> list[str]:
    """The promise, as the report states it: decision vs confirmation, the certificate, and any backtracking."""
    c = r.certification
    if c is None:
        return [
            "",
            "Certificate: none (--confirm-fraction 0): the tolerance was checked on the deciding examples only.",
        ]
    main = r.task.main_metric
    shipped = c.shipped
    d = shipped.main
    lines = [
        "",
        f"Certificate ({'passed' if shipped.passed else 'FAILED'}): {shipped.rule}. On {shipped.examples} confirmation "
        f"examples {main} {d.original:.2f} -> {d.candidate:.2f} ({d.difference:+.2f}; {d.confidence:.0%} paired "
        f"bootstrap interval {d.low:+.2f} .. {d.high:+.2f}).",
    ]
    if shipped.answers is not None:
        a = shipped.answers
        lines.append(
            f"It answers {a.changed} of the {shipped.examples} confirmation examples differently from the original "
            f"({100 * a.changed / max(shipped.examples, 1):.1f}%: {a.fixed} now right, {a.broken} now wrong); the "
            "more answers a model changes, the wider the interval, whatever the estimate."
        )
    if c.undone and not c.shipped_recovered:
        s = c.searched.main
        lines.append(
            f"The searched model failed it ({main} {s.difference:+.2f} on the confirmation split), so "
            f"{len(c.undone)} accepted change(s) were undone, latest first: {', '.join(c.undone)}."
        )
    if c.recovery is not None:
        rd, s = c.recovery.main, c.searched.main
        if c.recovery_reverted:
            lines.append(
                f"The recovered model measured {main} {rd.difference:+.2f} on the confirmation split, outside the "
                "allowance"
                + (
                    "."
                    if c.retry is None
                    else f"; the searched state less {', '.join(c.retry_undone)} was recovered again: {main} "
                    f"{c.retry.main.difference:+.2f} on the confirmation split, "
                    + (
                        "within the allowance: that model ships."
                        if c.retry.passed
                        else "outside the allowance too: the searched model, backtracked until it passed on its own "
                        "(not recovered), ships."
                    )
                )
            )
        else:
            lines.append(
                f"The certificate is the recovered model's; before recovery the searched model measured {main} "
                f"{s.difference:+.2f} on the confirmation split "
                f"({'within' if c.searched.passed else 'outside'} the allowance)."
            )
    return lines


def fidelity_lines(r: SearchReport) -> list[str]:
    f = r.fidelity or {}
    parts = []
    for name, v in f.items():
        if isinstance(v, dict) and "agreement" in v:
            parts.append(f"the same prediction on {v['agreement']:.2f}% of {v['texts']} {name}")
        elif isinstance(v, dict) and "cosine" in v:
            parts.append(
                f"mean cosine {v['cosine']:.2f} (5th percentile {v['cosine_p5']:.2f}) to the original's embeddings "
                f"of {v['texts']} {name}"
            )
        elif isinstance(v, dict) and "mean_abs_difference" in v:
            parts.append(f"mean |output difference| {v['mean_abs_difference']:.4f} on {v['texts']} {name}")
    note = f" Agreement {f['training_texts_note']}." if f.get("training_texts_note") else ""
    note += f" {f['note'][0].upper()}{f['note'][1:]}." if f.get("note") else ""
    if not parts:
        return ["", f"Fidelity to the original:{note}"] if note else []
    removed = (
        f" ({f['removed_dev_texts']} dev texts removed from the calibration file)" if f.get("removed_dev_texts") else ""
    )
    trained = (
        r.recovery is not None
        and r.recovery.get("kept", True)
        and (r.certification is None or r.certification.shipped_recovered)
    )
    caveat = (
        " The recovery trained on the training texts, so agreement there is optimistic; the confirmation split is "
        "the unbiased figure."
        if trained and "training texts" in f
        else ""
    )
    return ["", f"Fidelity to the original on unlabelled inputs: {'; '.join(parts)}{removed}.{caveat}{note}"]
