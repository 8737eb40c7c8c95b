"""The ``axformer`` command: a thin layer that maps flags to the library's configs.

Every subcommand calls the same function a Python user would; errors the user
can fix print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from axformer.benchmark.pricing import DEFAULT_PRICE_PER_HOUR
from axformer.errors import AxformerError
from axformer.tasks.selection import TaskSelection

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make fine-tuned Transformer encoders faster, smaller and, where the task allows, more accurate.",
)
console = Console(stderr=False)
err_console = Console(stderr=True)

# ----------------------------------------------------------------- shared options

TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task",
        "-t",
        help="Task name (sst2, mrpc, stsb, cola, rte, qqp, mnli, qnli, wnli, boolq, cb, superglue-rte, squad, "
        "bbcnews) or 'custom'.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Directory with the task in its official GLUE/SuperGLUE layout (default: $AXFORMER_DATA_DIR, "
        "else the hub).",
    ),
]
SourceOpt = Annotated[str, typer.Option("--source", help="Where benchmark data comes from: auto, local or hub.")]
TrainFileOpt = Annotated[
    Path | None, typer.Option("--train", help="Custom task: training file (.csv, .tsv or .jsonl).")
]
DevFileOpt = Annotated[Path | None, typer.Option("--dev", help="Custom task: dev file used only for reporting.")]
TextColOpt = Annotated[
    list[str] | None, typer.Option("--text-column", help="Custom task: text column (give twice for sentence pairs).")
]
LabelColOpt = Annotated[str, typer.Option("--label-column", help="Custom task: label column.")]
ProblemOpt = Annotated[
    str,
    typer.Option(
        "--problem",
        help="Custom task: classification, regression, similarity (pairs with a score, for embedding models), or "
        "extractive-qa (SQuAD JSON or JSONL files with question, context and answers).",
    ),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help="Custom task: comma-separated label names in id order (default: sorted distinct training labels).",
    ),
]
EmbeddingOpt = Annotated[
    bool,
    typer.Option(
        "--embedding",
        help="The model is a sentence-transformers embedding model: no head; a similarity task's pairs are "
        "scored by the cosine of their embeddings (stsb, or --problem similarity).",
    ),
]
DocStrideOpt = Annotated[
    int | None,
    typer.Option(
        "--doc-stride",
        help="Question answering: tokens by which the context windows overlap (default 128; windows are "
        "--max-seq-length long, default 384 for QA).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda[:N].")]
TrainPrecisionOpt = Annotated[
    str,
    typer.Option(
        "--train-precision",
        help="Mixed precision of training steps: auto (bf16 where the hardware has it: a CUDA GPU with bf16, a CPU "
        "with AVX512_BF16 or AMX; else fp32), fp32, bf16, or fp16 (CUDA). Evaluations stay fp32.",
    ),
]


_TASK_PARAMS: tuple[tuple[str, object, object], ...] = (
    ("task", TaskOpt, None),
    ("data_dir", DataDirOpt, None),
    ("source", SourceOpt, "auto"),
    ("train", TrainFileOpt, None),
    ("dev", DevFileOpt, None),
    ("text_column", TextColOpt, None),
    ("label_column", LabelColOpt, "label"),
    ("problem", ProblemOpt, "classification"),
    ("labels", LabelsOpt, None),
    ("embedding", EmbeddingOpt, False),
    ("doc_stride", DocStrideOpt, None),
)


def task_options(unset_defaults: bool = False):
    """Give a command the task options (``--task``, ``--data-dir``, custom files, ...) and hand it one
    :class:`TaskSelection` as ``selection``, so nine options are declared once, not on every command.

    With ``unset_defaults`` every option defaults to None and the command receives only the options given
    (a dict), so a config file or preset can supply the rest (``axformer optimize``).
    """

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "selection"]
        added = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None if unset_defaults else d, annotation=a)
            for n, a, d in _TASK_PARAMS
        ]

        @functools.wraps(fn)
        def wrapper(**kwargs):
            values = {n: kwargs.pop(n) for n, _, _ in _TASK_PARAMS}
            for key in ("data_dir", "train", "dev"):
                values[key] = str(values[key]) if values[key] is not None else None
            if unset_defaults:  # plain values for the pipeline's config (written as YAML, compared on resume)
                return fn(**kwargs, selection={k: v for k, v in values.items() if v is not None})
            if values["text_column"] is not None:
                values["text_column"] = tuple(values["text_column"])
            return fn(**kwargs, selection=TaskSelection(**values))

        params = own + added
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _check_inputs(output: Path | None, models: list[str | None], selection: TaskSelection | None = None) -> None:
    """Before any data is loaded or anything written: every local model argument is a model directory, and the
    output would overwrite none of the inputs."""
    from axformer.models.loading import is_local
    from axformer.models.record import require_model_dir
    from axformer.utils.io import refuse_overwriting_inputs

    for m in models:
        if m is not None and is_local(m):
            require_model_dir(m)
    if output is not None:
        extra = [selection.train, selection.dev, selection.data_dir] if selection is not None else []
        refuse_overwriting_inputs(output, [*models, *extra])


def _print_evaluation(evaluation, title: str) -> None:
    table = Table(title=title)
    table.add_column("split")
    table.add_column("examples", justify="right")
    table.add_column("loss", justify="right")
    metric_names = list(next(iter(evaluation.splits.values())).metrics) if evaluation.splits else []
    for m in metric_names:
        table.add_column(m, justify="right")
    for name, res in evaluation.splits.items():
        table.add_row(name, str(res.num_examples), f"{res.loss:.4f}", *(f"{res.metrics[m]:.2f}" for m in metric_names))
    console.print(table)


# ----------------------------------------------------------------------- commands


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("axformer").setLevel(logging.INFO)


@app.command("tasks")
def tasks_cmd() -> None:
    """List the tasks axformer knows, with their labels and metrics."""
    from axformer.tasks.spec import BUILTIN_TASKS

    table = Table()
    for col in ("task", "benchmark", "inputs", "labels", "metrics (main first)"):
        table.add_column(col)
    for t in BUILTIN_TASKS.values():
        metrics = [t.main_metric] + [m for m in t.metrics if m != t.main_metric]
        table.add_row(
            t.name,
            t.benchmark,
            "pair" if t.num_text_fields == 2 else "single",
            "answer span" if t.is_qa else "regression" if t.is_regression else ", ".join(t.label_names),
            ", ".join(metrics),
        )
    console.print(table)


@app.command("finetune")
@task_options()
def finetune_cmd(
    model: Annotated[str, typer.Argument(help="Model directory (or hub id when online).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the fine-tuned model.")],
    epochs: Annotated[float, typer.Option(help="Epochs (fractions allowed).")] = 3.0,
    learning_rate: Annotated[float, typer.Option("--lr", "--learning-rate")] = 5e-5,
    batch_size: int = 32,
    warmup_ratio: float = 0.06,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    max_seq_length: Annotated[
        int | None, typer.Option(help="Tokens per input (default 128; 384 for question answering).")
    ] = None,
    max_train_examples: Annotated[
        int | None, typer.Option(help="Train on a seeded subset of this many examples.")
    ] = None,
    heldout_fraction: Annotated[
        float, typer.Option(help="Share of the training set held out for model selection and all later decisions.")
    ] = 0.15,
    seed: int = 42,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between held-out evaluations (default: each epoch).")
    ] = None,
    eval_max_examples: Annotated[
        int | None, typer.Option(help="Held-out examples used for model selection during training.")
    ] = 2000,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between resumable checkpoints.")] = 50,
    new_head: Annotated[
        bool,
        typer.Option("--new-head", help="Replace the checkpoint's classification head with a new one for this task."),
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow loading pickle (pytorch_model.bin) checkpoints.")
    ] = False,
    device: DeviceOpt = "auto",
    train_precision: TrainPrecisionOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")] = False,
    selection: TaskSelection | None = None,
) -> None:
    """Fine-tune a model on a task (conventional baseline), selecting the best checkpoint on the held-out split."""
    from axformer.training.finetune import FinetuneConfig, finetune

    _check_inputs(output, [model], selection)

    if output.exists() and not overwrite:
        raise AxformerError(
            f"output directory {output} already exists; pass --overwrite to replace it or choose another --output"
        )
    config = FinetuneConfig(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        max_seq_length=max_seq_length,
        max_train_examples=max_train_examples,
        heldout_fraction=heldout_fraction,
        seed=seed,
        eval_every=eval_every,
        eval_max_examples=eval_max_examples,
        checkpoint_every=checkpoint_every,
        new_head=new_head,
        allow_pickle=allow_pickle,
        device=device,
        precision=train_precision,
    )
    config.validate()
    data = selection.load()
    result = finetune(model, data, output, config, overwrite=overwrite)
    _print_evaluation(
        result.evaluation,
        f"{data.spec.display_name}: fine-tuned in {result.wall_time_s / 60:.1f} min ({result.steps} steps)",
    )
    console.print(f"model saved to {result.output}")


@app.command("evaluate")
@task_options()
def evaluate_cmd(
    model: Annotated[str, typer.Argument(help="Model directory (or hub id when online).")],
    split: Annotated[
        list[str] | None,
        typer.Option("--split", help="heldout, dev, or a named dev split; repeatable (default: heldout and dev)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory for evaluation.json and predictions (default: MODEL/eval for local models).",
        ),
    ] = None,
    max_examples: Annotated[int | None, typer.Option(help="Evaluate only the first N examples of each split.")] = None,
    batch_size: int = 64,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
    device: DeviceOpt = "auto",
    selection: TaskSelection | None = None,
) -> None:
    """Metrics of a model on the held-out split and the dev set, as a table and as JSON."""
    from axformer.evaluation import evaluate
    from axformer.models.loading import is_local

    if output is None:
        output = Path(model) / "eval" if is_local(model) else Path("eval-" + model.replace("/", "-"))
    _check_inputs(output, [model], selection)
    data = selection.load_if_given()
    result = evaluate(
        model,
        data,
        selection.data_dir,
        tuple(split or ("heldout", "dev")),
        batch_size,
        max_examples,
        device,
        output,
        allow_pickle,
    )
    _print_evaluation(result, f"{result.task}: {model}")
    console.print(f"results written to {output}/evaluation.json")


@app.command("analyze")
@task_options()
def analyze_cmd(
    model: Annotated[str, typer.Argument(help="Fine-tuned model directory.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Directory for significance.json, summary.md and heatmaps (default: MODEL/analysis)."
        ),
    ] = None,
    scorers: Annotated[
        str, typer.Option("--scorers", help="Comma-separated: ablation, gradient, similarity, quantization.")
    ] = ",".join(("ablation", "gradient", "similarity", "quantization")),
    max_examples: Annotated[
        int, typer.Option(help="Held-out examples scored (seeded stratified sample; 0: all).")
    ] = 2000,
    sample_seed: int = 0,
    groups: Annotated[int, typer.Option(help="FFN neuron groups per layer.")] = 12,
    normalize_heads: Annotated[
        bool, typer.Option("--normalize-heads", help="L2-normalise gradient head scores per layer (Michel et al.).")
    ] = False,
    quant_bits: Annotated[
        str, typer.Option("--quant-bits", help="Precisions for quantization sensitivity: 8, 4 or 8,4.")
    ] = "8,4",
    batch_size: int = 64,
    no_prefix_cache: Annotated[
        bool,
        typer.Option("--no-prefix-cache", help="Run every candidate through the whole model (slower; for comparison)."),
    ] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    selection: TaskSelection | None = None,
) -> None:
    """Significance analysis on the held-out split: ablation, gradient importance, layer similarity, quantization
    sensitivity.
    """
    from axformer.analysis.analyze import AnalyzeConfig, analyze, default_output

    try:
        bits = tuple(int(b) for b in quant_bits.split(",") if b.strip())
    except ValueError:
        raise AxformerError(f"--quant-bits {quant_bits!r}; expected 8, 4 or 8,4") from None
    config = AnalyzeConfig(
        scorers=tuple(s.strip() for s in scorers.split(",") if s.strip()),
        max_examples=max_examples or None,
        sample_seed=sample_seed,
        batch_size=batch_size,
        groups=groups,
        normalize_heads=normalize_heads,
        quant_bits=bits,
        prefix_cache=not no_prefix_cache,
        device=device,
        allow_pickle=allow_pickle,
    )
    config.validate()
    output = output or default_output(model)
    _check_inputs(output, [model], selection)
    if output.exists() and not overwrite:
        raise AxformerError(
            f"output directory {output} already exists; pass --overwrite to replace it or choose another --output"
        )
    data = selection.load_if_given()
    sig = analyze(model, data, selection.data_dir, output, config, overwrite=overwrite)
    ref = sig["reference"]
    main = sig["task"]["main_metric"]
    console.print(
        f"{sig['task']['display_name']}: held-out ({sig['split']['used']} examples) loss "
        f"{ref['mean_loss']:.4f}, {main} {ref['metrics'][main]:.2f}"
    )
    if "ablation" in sig:
        rows = sig["ablation"]["rows"]
        helps = [r for r in rows if r["delta_loss"] < 0]
        top = max(rows, key=lambda r: r["delta_loss"])
        console.print(
            f"ablation: {len(rows)} removals in {sig['ablation']['seconds']:.0f} s; most significant "
            f"{top['component']} (+{top['delta_loss']:.4f} loss); {len(helps)} removals lower the loss"
        )
    console.print(f"written to {output}/ (significance.json, summary.md, heatmaps)")


def _given(values: dict) -> dict:
    """The options the user gave (None: not given), at any depth of a config section."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            v = _given(v) or None
        if v is not None:
            out[k] = v
    return out


def _factor(text: str | None, option: str) -> float | None:
    """A factor option that also takes 'none' (None here; the caller turns it into an explicit null)."""
    if text is None or text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise AxformerError(f"{option} {text!r}; expected a factor above 1 (e.g. 10) or none") from None


def _layer_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AxformerError(
            f"{option} {text!r}; expected comma-separated layer indices such as 5,4,3, or none"
        ) from None


def _rungs(specs: list[str] | None) -> list[dict] | None:
    """``--try-student`` values as the config's ``try_students`` (``none``: try nothing)."""
    if specs is None:
        return None
    if [x.strip().lower() for x in specs] == ["none"]:
        return []
    from dataclasses import asdict

    from axformer.distill.ladder import parse_rung

    return [asdict(parse_rung(x)) for x in specs]


@app.command("optimize")
@task_options(unset_defaults=True)
def optimize_cmd(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Model directory: fine-tuned for the task, or a pre-trained checkpoint (fine-tuned first)."
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML or TOML file with any of the options below (and every stage's settings); the "
            "command line overrides it.",
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="most-accurate, fastest-within-1, smallest-within-1 or demo.")
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="The embedded default: bundled all-MiniLM-L6-v2 on BBC News, offline, a few minutes on 2 cores.",
        ),
    ] = False,
    from_stage: Annotated[
        str | None,
        typer.Option(
            "--from-stage",
            help="Redo this stage and all after it: finetune, analyze, search, export, benchmark, report.",
        ),
    ] = None,
    until_stage: Annotated[
        str | None,
        typer.Option("--until-stage", help="Stop after this stage (e.g. search: the optimized PyTorch model only)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Directory for every stage's results and the report (default: MODEL-axformer)."
        ),
    ] = None,
    goal: Annotated[
        str | None,
        typer.Option("--goal", help="accuracy (AxFormer: remove only what hurts), speed or size (within --max-drop)."),
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", help="speed/size: allowed drop of the held-out metrics, in points.")
    ] = None,
    max_rel_drop: Annotated[
        float | None, typer.Option("--max-rel-drop", help="speed/size: allowed drop in percent of the metric.")
    ] = None,
    target_speedup: Annotated[
        float | None,
        typer.Option("--target-speedup", help="speed: stop once the predicted batch-1 speed-up reaches this factor."),
    ] = None,
    latency_runtime: Annotated[
        str | None,
        typer.Option(
            "--latency-runtime",
            help="speed: where the cost model times pruned variants: pytorch, or onnxruntime-int8 (as the int8 "
            "artifact runs; --target-speedup is then over ONNX Runtime int8 of the original).",
        ),
    ] = None,
    target_size: Annotated[
        str | None,
        typer.Option(
            "--target-size",
            help="size: stop once the artifact is this many times smaller on disk than the fp32 original "
            "(smallest-within-1: 10); 'none': as small as the tolerance allows.",
        ),
    ] = None,
    guard: Annotated[
        str | None,
        typer.Option(
            "--guard", help="speed/size: the tolerance holds for every task metric (all) or the main one (main)."
        ),
    ] = None,
    max_loss_increase: Annotated[
        float | None,
        typer.Option(
            "--max-loss-increase",
            help="speed/size: also keep the mean held-out loss within this percentage of the original's.",
        ),
    ] = None,
    k: Annotated[int | None, typer.Option("-k", help="Keys kept per query by approximate attention.")] = None,
    attention: Annotated[
        list[str] | None,
        typer.Option(
            "--attention",
            help="Approximate attention tried per layer: topk (AxFormer's hard attention) and/or sign "
            "(sign-matching); give twice for both, or 'none' for no approximate attention. accuracy: in this "
            "order (default topk); speed: after pruning, only where measured faster than dense (default both).",
        ),
    ] = None,
    slack: Annotated[
        float | None,
        typer.Option(
            help="accuracy: descend into a block's groups/heads when its loss is below slack x the best loss."
        ),
    ] = None,
    attention_layers: Annotated[
        str | None,
        typer.Option(
            "--attention-layers",
            help="accuracy: layers (and their order) of the approximate-attention phase, e.g. 5,4,3; "
            "'none' skips it (default: first to last).",
        ),
    ] = None,
    prune_layers: Annotated[
        str | None,
        typer.Option(
            "--prune-layers",
            help="accuracy: layers (and their order) of the pruning phase; 'none' skips it (default: last to first).",
        ),
    ] = None,
    fraction: Annotated[
        float | None, typer.Option(help="accuracy, --rule axformer: share of examples that must not get worse.")
    ] = None,
    rule: Annotated[
        str | None,
        typer.Option(
            "--rule",
            help="accuracy: paired (default: keep a change only if its per-example loss improvement over the "
            "model it changes is significant and, for classification, it fixes significantly more answers than it "
            "breaks; Bonferroni over the trials) or axformer (the published rule).",
        ),
    ] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="accuracy, --rule paired: error rate.")] = None,
    groups: Annotated[int | None, typer.Option(help="FFN neuron groups per layer.")] = None,
    units: Annotated[
        str | None,
        typer.Option(
            "--units",
            help="speed/size: what the search removes: all (layers, blocks, heads, FFN groups), coarse (layers "
            "and blocks), auto (default: coarse when recovering by distillation).",
        ),
    ] = None,
    max_examples: Annotated[
        int | None, typer.Option(help="Held-out examples that decide (seeded stratified sample; 0: all).")
    ] = None,
    latency_examples: Annotated[
        int | None, typer.Option(help="Dev texts timed one by one for the batch-1 latency in the search report.")
    ] = None,
    recover: Annotated[
        str | None,
        typer.Option(
            "--recover",
            help="Recovery after the search: 'continue' fine-tunes the found model again from its "
            "weights; 'pretrained' (AxFormer) applies the found structure to the pre-trained "
            "checkpoint and fine-tunes that; 'distill' (FastFormers) distils the original model into "
            "the found one.",
        ),
    ] = None,
    recover_epochs: Annotated[
        float | None,
        typer.Option(
            "--recover-epochs",
            help="Epochs of recovery training (and of each distillation of --strategy fastformers); default: "
            "enough to see 6,000 examples, from 1 to 3 epochs.",
        ),
    ] = None,
    recover_lr: Annotated[
        float | None, typer.Option("--recover-lr", help="Learning rate of recovery training.")
    ] = None,
    recover_max_train_examples: Annotated[
        int | None,
        typer.Option(
            "--recover-max-train-examples",
            help="Train the recovery on a seeded subset of this many examples.",
        ),
    ] = None,
    recover_windows: Annotated[
        int | None,
        typer.Option(
            "--recover-windows",
            help="--recover distill: later windows of each long training text added as unlabelled inputs "
            "(the original's outputs as targets; default 2, 0: none).",
        ),
    ] = None,
    recover_augment: Annotated[
        int | None,
        typer.Option(
            "--recover-augment",
            help="--recover distill: perturbed copies of every training text added as unlabelled inputs (words "
            "replaced from the training texts' own vocabulary, deleted or swapped; never a dev or held-out text; "
            "default 0, 4 in the recipe --strategy auto picks for a training set under 20,000 examples).",
        ),
    ] = None,
    recover_augment_min_words: Annotated[
        int | None,
        typer.Option(
            "--recover-augment-min-words",
            help="--recover-augment: perturb only training texts of at least this many words (a pair's fields "
            "together; default 0: every text).",
        ),
    ] = None,
    recover_augment_words: Annotated[
        str | None,
        typer.Option(
            "--recover-augment-words",
            help="--recover-augment: replacement words drawn from the training texts' word frequencies (unigram) "
            "or from each word's nearest tokens in the model's input-embedding table (neighbours).",
        ),
    ] = None,
    recover_hard_weight: Annotated[
        float | None,
        typer.Option(
            "--recover-hard-weight",
            help="--recover distill: weight of the task's loss on the gold labels beside the distillation (default: "
            "1 for an embedding model with gold-scored pairs, trained on beside its single texts; 0 otherwise); "
            "unlabelled inputs (windows, perturbed copies, calibration texts) take no part in it.",
        ),
    ] = None,
    recover_max_minutes: Annotated[
        float | None,
        typer.Option(
            "--recover-max-minutes",
            help="Minutes of training steps each recovery may spend (the fallback after a refused student is one "
            "more); at the limit it keeps its best checkpoint so far. Default: every planned step.",
        ),
    ] = None,
    quantization_aware: Annotated[
        bool | None,
        typer.Option(
            "--quantization-aware/--no-quantization-aware",
            help="--recover distill (and the recipe's last distillation): round what the artifact stores in int4, "
            "or into an int8 artifact every matrix product's weights and inputs as dynamic int8 does, while the "
            "student trains, so the distillation wins back the rounding too (it also distils an unpruned model "
            "then). Default: on for the FastFormers recipe's last distillation into an int8 artifact (MRPC, SST-2: "
            "docs/promises.md, sessions 29-30), off elsewhere (int4 did not keep dev within the tolerance better "
            "than post-training int4, docs/size.md).",
        ),
    ] = None,
    confirm_fraction: Annotated[
        float | None,
        typer.Option(
            "--confirm-fraction",
            help="Share of the held-out split kept from every decision to certify the result (default 0.4; "
            "0: no certificate).",
        ),
    ] = None,
    certify: Annotated[
        str | None,
        typer.Option(
            "--certify",
            help="Certificate rule: estimate (the measured drop on the confirmation split is within the "
            "tolerance) or bound (its 95% confidence bound is).",
        ),
    ] = None,
    calibration_texts: Annotated[
        Path | None,
        typer.Option(
            "--calibration-texts",
            help="Unlabelled in-domain texts (.txt: one per line, pairs tab-separated; .csv/.tsv/.jsonl with "
            "--calibration-column): the final model's agreement with the original is measured on them.",
        ),
    ] = None,
    decision_data: Annotated[
        Path | None,
        typer.Option(
            "--decision-data",
            help="A labelled file in the task's format (GLUE TSV, or the custom task's columns) that replaces the "
            "held-out split for every decision and the certificate: a sample like the inputs the model will "
            "serve. Refused if it shares examples with the dev set.",
        ),
    ] = None,
    fidelity_texts: Annotated[
        int | None,
        typer.Option(
            "--fidelity-texts",
            help="speed/size, classification: also keep agreement with the original within the tolerance on "
            "this many training texts (plus --calibration-texts); 0: off.",
        ),
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(
            "--min-cosine",
            help="Embedding models: the lowest mean cosine (points) of a candidate's embeddings to the original's "
            "on the fidelity pool (default 88).",
        ),
    ] = None,
    min_cosine_p5: Annotated[
        float | None,
        typer.Option(
            "--min-cosine-p5",
            help="Embedding models: the lowest 5th percentile of those cosines (points; default 80).",
        ),
    ] = None,
    calibration_column: Annotated[
        list[str] | None,
        typer.Option("--calibration-column", help="Column of --calibration-texts (twice for sentence pairs)."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="search (the --goal search), fastformers (FastFormers: [distil to --student-layers,] "
            "prune to --heads/--ffn per layer by gradient importance, distil again) or auto (fastformers from "
            "20,000 training examples, search below; fastest-within-1's default).",
        ),
    ] = None,
    student_layers: Annotated[
        str | None,
        typer.Option(
            "--student-layers",
            help="fastformers: first distil into this many of the teacher's layers (e.g. 3) or these "
            "layers (e.g. 0,2,5; one layer: 5,). search: after the search, keep only these layers and win them back by "
            "distillation (on the training texts and --calibration-texts); the certificate judges the student "
            "and falls back to the searched model without it.",
        ),
    ] = None,
    heads: Annotated[int | None, typer.Option("--heads", help="fastformers: attention heads kept per layer.")] = None,
    ffn: Annotated[int | None, typer.Option("--ffn", help="fastformers: FFN neurons kept per layer.")] = None,
    try_students: Annotated[
        list[str] | None,
        typer.Option(
            "--try-student",
            help="fastformers: a smaller student to try first, LAYERS[:HEADS[:FFN]] (e.g. 3 or 3:8:768; give "
            "several, smallest first). The first within --max-drop of the original on the deciding examples whose "
            "artifact passes the certificate's check is the model; none holding, the recipe's own sizes are "
            "trained. auto tries half the layers when it picks the sizes; 'none' tries nothing.",
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="fastformers: uniform (the same count in every layer) or global (the same total, shared "
            "by importance).",
        ),
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget",
            help="fastformers: minutes for the whole job. The teacher is timed here first, the distillations' "
            "epochs planned to fit what the earlier stages left and the export and benchmark will need, the plan "
            "printed; each distillation also stops at its planned time, keeping its best checkpoint.",
        ),
    ] = None,
    scorers: Annotated[
        list[str] | None,
        typer.Option(
            "--scorer",
            help="Significance scorers of the analysis stage (ablation, gradient, similarity, "
            "quantization; give several); 'none' skips the stage.",
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help="Export: fp32, int8, fp16, mixed, or auto (the faster of fp32 and int8 on this machine "
            "within the tolerance).",
        ),
    ] = None,
    price_per_hour: Annotated[
        float | None,
        typer.Option(
            "--price-per-hour",
            help="Benchmark: machine price in USD per hour, for the cost per 100M requests (default: "
            "0.085, assumed; 0: omit).",
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Benchmark: interleaved timing rounds.")] = None,
    allow_pickle: Annotated[bool | None, typer.Option("--allow-pickle")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto (CUDA when available), cpu or cuda[:N], for every stage.")
    ] = None,
    train_precision: Annotated[
        str | None,
        typer.Option(
            "--train-precision",
            help="Mixed precision of fine-tuning and recovery steps: auto (bf16 where the hardware has it, else "
            "fp32), fp32, bf16, or fp16 (CUDA). Evaluations and decisions stay fp32.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete the output directory first and run everything again.")
    ] = False,
    selection: dict | None = None,
) -> None:
    """Optimize a model end to end: [fine-tune,] analyze, search, export, benchmark against the baselines, report.

    Every stage keeps its result in the output directory; running the same command again skips what is done.
    """
    import shutil

    from axformer.pipeline.config import PipelineConfig
    from axformer.pipeline.run import run_pipeline

    if demo:
        preset = preset or "demo"
        model = model or "bundled"
        output = output or Path("axformer-demo")
    modes = None if attention is None else [] if [m.lower() for m in attention] == ["none"] else attention
    search = {
        "goal": goal,
        "target_speedup": target_speedup,
        "latency_runtime": latency_runtime,
        "target_size": _factor(target_size, "--target-size"),
        "groups": groups,
        "units": units,
        "max_examples": max_examples or None,
        "latency_examples": latency_examples,
        "strategy": strategy,
        "student_layers": student_layers,
        "heads": heads,
        "ffn": ffn,
        "try_students": _rungs(try_students),
        "budget": budget,
        "time_budget": time_budget,
        "tolerance": {
            "max_drop": max_drop,
            "max_rel_drop": max_rel_drop,
            "guard": guard,
            "max_loss_increase": max_loss_increase,
        },
        "axformer": {
            "slack": slack,
            "fraction": fraction,
            "prune_layers": _layer_list(prune_layers, "--prune-layers"),
            "rule": rule,
            "alpha": alpha,
        },
        "attention": {"modes": modes, "k": k, "layers": _layer_list(attention_layers, "--attention-layers")},
        "certificate": {"fraction": confirm_fraction, "rule": certify},
        "calibration_texts": str(calibration_texts) if calibration_texts else None,
        "decision_data": str(decision_data) if decision_data else None,
        "calibration_columns": calibration_column,
        "fidelity": {"texts": fidelity_texts, "min_cosine": min_cosine, "min_cosine_p5": min_cosine_p5},
        "recovery": {
            "mode": recover,
            "epochs": recover_epochs,
            "learning_rate": recover_lr,
            "max_train_examples": recover_max_train_examples,
            "windows": recover_windows,
            "augment": recover_augment,
            "augment_min_words": recover_augment_min_words,
            "augment_words": recover_augment_words,
            "hard_weight": recover_hard_weight,
            "max_minutes": recover_max_minutes,
            "quantization_aware": quantization_aware,
            "precision": train_precision,
        },
    }
    sections = {
        "search": search,
        "export": {"precision": precision},
        "benchmark": {"price_per_hour": price_per_hour, "rounds": rounds},
        "analyze": {"scorers": [] if scorers == ["none"] else scorers},
        "finetune": {"precision": train_precision},
    }
    for name, values in sections.items():
        for key, value in (("device", device), ("allow_pickle", allow_pickle)):
            if name != "benchmark":
                values[key] = value
        sections[name] = _given(values)
    if max_examples == 0:
        sections["search"]["max_examples"] = None  # every held-out example
    if target_size is not None and target_size.strip().lower() == "none":
        sections["search"]["target_size"] = None  # no target: as far as the tolerance allows
    overrides = {
        "model": model,
        **selection,
        "output": str(output) if output else None,
        **sections,
    }
    cfg = PipelineConfig.build(config_file, preset, overrides)
    if overwrite and cfg.output and Path(cfg.output).exists():
        _check_inputs(Path(cfg.output), [cfg.model], cfg.selection())
        shutil.rmtree(cfg.output)
    result = run_pipeline(cfg, from_stage, until_stage, progress=lambda m: console.print(m))
    out = result.output
    report = out / "report.md"
    if "report" in result.ran and report.exists():
        text = report.read_text()
        start = text.find("## Original vs optimized")
        end = text.find("## Cumulative view")
        if start >= 0:
            console.print(text[start : end if end > start else None])
        console.print(f"report: {out / 'report.html'} (and report.md); config: {out / 'config.yaml'}")
    else:
        console.print(f"stages done: {', '.join(result.ran + result.skipped) or 'none'}; results in {out}/")


@app.command("distill")
@task_options()
def distill_cmd(
    teacher: Annotated[
        str, typer.Option("--teacher", help="Fine-tuned teacher directory (its task and held-out split are reused).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the distilled student.")],
    student: Annotated[
        str | None,
        typer.Option(
            "--student",
            help="Student model sharing the teacher's vocabulary (a new head is made if it has none); "
            "default: derived from the teacher.",
        ),
    ] = None,
    student_layers: Annotated[
        str | None,
        typer.Option(
            "--student-layers",
            help="Keep this many layers spread evenly (e.g. 3) or these layers (e.g. 0,2,5; one layer: 5,) of "
            "the teacher (or of --student).",
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the soft cross-entropy.")] = 1.0,
    soft_weight: Annotated[float, typer.Option(help="Weight of the soft cross-entropy to the teacher's logits.")] = 1.0,
    hard_weight: Annotated[
        float,
        typer.Option(
            help="Weight of the task loss on the gold labels (of the labelled training rows; the added windows and "
            "perturbed copies have none)."
        ),
    ] = 0.0,
    windows: Annotated[
        int,
        typer.Option(
            help="Later windows of each long training text added as unlabelled inputs (teacher targets; 0: none)."
        ),
    ] = 0,
    augment: Annotated[
        int,
        typer.Option(
            help="Perturbed copies of every training text added as unlabelled inputs (teacher targets; words "
            "replaced from the training texts' vocabulary, deleted or swapped; dev and held-out texts never; 0: none)."
        ),
    ] = 0,
    augment_rate: Annotated[float, typer.Option(help="Share of words each --augment copy perturbs.")] = 0.15,
    augment_min_words: Annotated[
        int,
        typer.Option(
            help="Perturb only training texts of at least this many words (a pair's fields together; 0: every "
            "text): aims --augment at inputs like those served when the training texts are mostly shorter."
        ),
    ] = 0,
    augment_words: Annotated[
        str,
        typer.Option(
            help="Replacement words of --augment: unigram (drawn from the training texts' word frequencies) or "
            "neighbours (each word's nearest tokens in the teacher's input-embedding table, as TinyBERT's GloVe "
            "replacement)."
        ),
    ] = "unigram",
    calibration_texts: Annotated[
        Path | None,
        typer.Option(
            "--calibration-texts",
            help="Unlabelled in-domain texts added as inputs (the teacher's outputs are their targets): .txt (one "
            "per line, a pair tab-separated), or .csv/.tsv/.jsonl with --calibration-column. Any that shares a "
            "text with a dev, held-out or training input is left out.",
        ),
    ] = None,
    calibration_column: Annotated[
        list[str] | None,
        typer.Option("--calibration-column", help="Column of --calibration-texts (twice for sentence pairs)."),
    ] = None,
    hidden_weight: Annotated[
        float, typer.Option(help="Weight of the hidden-state MSE (a learned projection when widths differ).")
    ] = 0.0,
    attention_weight: Annotated[float, typer.Option(help="Weight of the attention-map MSE.")] = 0.0,
    qat_block_size: Annotated[
        int | None,
        typer.Option(
            "--qat-block-size",
            help="Quantization-aware: round the encoder's matrices to ONNX Runtime's int4 grid in blocks of this "
            "many inputs while training (the student's weights are saved on it; export it with --precision int4 "
            "--int4-block-size B). Default: trained in fp32.",
        ),
    ] = None,
    qat_table_block_size: Annotated[
        int | None,
        typer.Option(
            "--qat-table-block-size",
            help="Quantization-aware: round the embedding tables to the int4 grid in blocks of this many (export "
            "with --embeddings int4 --int4-table-block-size T).",
        ),
    ] = None,
    qat_attention_inputs: Annotated[
        bool,
        typer.Option(
            "--qat-attention-inputs/--no-qat-attention-inputs",
            help="With --qat-block-size: Q, K and V too (export with --int4-attention); off: they stay fp32 here "
            "and int8 in the fused attention.",
        ),
    ] = True,
    qat_int8: Annotated[
        bool,
        typer.Option(
            "--qat-int8",
            help="Quantization-aware for a dynamic int8 export: round every matrix product's weights (per output row) "
            "and inputs (per tensor, as ONNX Runtime does at run time) while training.",
        ),
    ] = False,
    no_teacher_cache: Annotated[
        bool,
        typer.Option("--no-teacher-cache", help="Run the teacher at every step even when only its logits are needed."),
    ] = False,
    epochs: Annotated[float, typer.Option(help="Epochs (fractions allowed).")] = 3.0,
    learning_rate: Annotated[float, typer.Option("--lr", "--learning-rate")] = 1e-4,
    batch_size: int = 32,
    max_seq_length: int = 128,
    max_train_examples: Annotated[
        int | None, typer.Option(help="Train on a seeded subset of this many examples.")
    ] = None,
    seed: int = 42,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between held-out evaluations (default: each epoch).")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between resumable checkpoints.")] = 50,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
    device: DeviceOpt = "auto",
    train_precision: TrainPrecisionOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    selection: TaskSelection | None = None,
) -> None:
    """Distil a fine-tuned teacher into a smaller student (task-specific, FastFormers' losses); the held-out split
    selects the checkpoint.
    """
    from axformer.distill import DistillConfig, distill

    _check_inputs(output, [teacher, student], selection)

    if output.exists() and not overwrite:
        raise AxformerError(
            f"output directory {output} already exists; pass --overwrite to replace it or choose another --output"
        )
    config = DistillConfig(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        max_train_examples=max_train_examples,
        seed=seed,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        allow_pickle=allow_pickle,
        device=device,
        precision=train_precision,
        temperature=temperature,
        soft_weight=soft_weight,
        hard_weight=hard_weight,
        windows=windows,
        augment=augment,
        augment_rate=augment_rate,
        augment_min_words=augment_min_words,
        augment_words=augment_words,
        hidden_weight=hidden_weight,
        attention_weight=attention_weight,
        cache_teacher=not no_teacher_cache,
        qat_block_size=qat_block_size,
        qat_table_block_size=qat_table_block_size,
        qat_attention_inputs=qat_attention_inputs,
        qat_int8=qat_int8,
    )
    config.validate()
    data = selection.load_if_given()
    extra_texts = None
    if calibration_texts is not None:  # read (and refused when malformed) before anything is written
        from axformer.distill.trainer import teacher_task
        from axformer.tasks.calibration import load_calibration_texts

        data = teacher_task(teacher, data, selection.data_dir)
        columns = tuple(calibration_column) if calibration_column else None
        extra_texts = load_calibration_texts(calibration_texts, data.spec.input_fields, columns)
    result = distill(
        teacher,
        output,
        student=student,
        student_layers=student_layers,
        data=data,
        data_dir=selection.data_dir,
        config=config,
        overwrite=overwrite,
        extra_texts=extra_texts,
    )
    _print_evaluation(result.evaluation, f"distilled in {result.wall_time_s / 60:.1f} min ({result.steps} steps)")
    console.print(f"student saved to {result.output}")


@app.command("export")
@task_options()
def export_cmd(
    model: Annotated[str, typer.Argument(help="Model directory (fine-tuned or optimized by axformer).")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Directory for model.onnx, config, tokenizer and export.json (Optimum's layout)."
        ),
    ],
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fp32, int8 (dynamic, per-channel weights), int4 (block-wise weights, MatMulNBits), fp16 "
            "(CUDA), mixed (per-matrix fp32/int8/int4 by quantization sensitivity), or auto (fp32 or int8, "
            "whichever is measured faster here within --max-drop).",
        ),
    ] = "int8",
    embeddings: Annotated[
        str,
        typer.Option(
            "--embeddings",
            help="Embedding tables: fp32, int8, or int4 (the word table block-wise, GatherBlockQuantized, the "
            "lookup then left unfused; the position and token-type tables, added to every token, int8). With "
            "--precision mixed they join the plan as matrices of their own.",
        ),
    ] = "fp32",
    int4_attention: Annotated[
        bool,
        typer.Option(
            "--int4-attention", help="int4/mixed: Q, K, V in int4 too (attention left unfused: smaller, slower)."
        ),
    ] = False,
    prune_vocabulary: Annotated[
        bool,
        typer.Option(
            "--prune-vocabulary",
            help="Keep only the token ids the training (and calibration) texts use; the tokenizer is rewritten.",
        ),
    ] = False,
    keep_characters: Annotated[
        bool,
        typer.Option("--keep-characters", help="--prune-vocabulary: keep every single-character piece too."),
    ] = False,
    trim_positions: Annotated[
        bool,
        typer.Option(
            "--trim-positions", help="Keep position embeddings only up to the model's recorded max sequence length."
        ),
    ] = False,
    min_count: Annotated[
        int,
        typer.Option(
            "--min-count", help="--prune-vocabulary: keep a token only if the training texts use it this often."
        ),
    ] = 1,
    calibration_texts: Annotated[
        Path | None,
        typer.Option("--calibration-texts", help="--prune-vocabulary: unlabelled texts whose tokens are kept too."),
    ] = None,
    calibration_column: Annotated[
        list[str] | None, typer.Option("--calibration-column", help="Column(s) of a CSV/TSV/JSONL calibration file.")
    ] = None,
    no_fusion: Annotated[
        bool, typer.Option("--no-fusion", help="Skip ONNX Runtime's transformer graph fusions.")
    ] = False,
    per_tensor: Annotated[
        bool, typer.Option("--per-tensor", help="int8: one scale per weight matrix instead of per output channel.")
    ] = False,
    int8_ops: Annotated[
        str, typer.Option("--int8-ops", help="int8: comma-separated op types to quantize.")
    ] = "MatMul,Attention",
    exclude_node: Annotated[
        list[str] | None, typer.Option("--exclude-node", help="ONNX node names to keep in fp32 (repeatable).")
    ] = None,
    int4_block_size: Annotated[int, typer.Option(help="int4/mixed: input features per int4 scale block.")] = 32,
    int4_table_block_size: Annotated[
        int | None,
        typer.Option(help="int4 embedding tables: hidden features per scale block (default: --int4-block-size)."),
    ] = None,
    int4_rounding: Annotated[
        str,
        typer.Option(
            help="int4/mixed: how int4 matrices are rounded: gptq (fitted on training texts; the layer outputs move "
            "least) or nearest."
        ),
    ] = "gptq",
    significance: Annotated[
        Path | None,
        typer.Option(
            "--significance", help="mixed: significance.json from axformer analyze (else sensitivities are measured)."
        ),
    ] = None,
    max_drop: Annotated[
        float,
        typer.Option(
            "--max-drop",
            help="Fail if the artifact loses more than this many points of the held-out main metric against PyTorch.",
        ),
    ] = 1.0,
    max_examples: Annotated[int, typer.Option(help="Held-out examples for validation (0: all).")] = 2000,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    selection: TaskSelection | None = None,
) -> None:
    """Export to ONNX with graph fusion and int8/int4/fp16/mixed precision, validated on the held-out split."""
    from axformer.export.artifact import ExportConfig, export_model
    from axformer.surgery.vocabulary import VocabularyConfig

    _check_inputs(output, [model], selection)

    config = ExportConfig(
        precision=precision,
        fusion=not no_fusion,
        per_channel=not per_tensor,
        int8_op_types=tuple(o.strip() for o in int8_ops.split(",") if o.strip()),
        exclude_nodes=list(exclude_node or []),
        int4_block_size=int4_block_size,
        int4_table_block_size=int4_table_block_size,
        int4_rounding=int4_rounding,
        embeddings=embeddings,
        int4_attention=int4_attention,
        vocabulary=VocabularyConfig(prune_vocabulary, keep_characters, trim_positions, min_count=min_count),
        calibration_texts=str(calibration_texts) if calibration_texts else None,
        calibration_columns=list(calibration_column) if calibration_column else None,
        max_drop=max_drop,
        max_examples=max_examples or None,
        significance=str(significance) if significance else None,
        device=device,
        allow_pickle=allow_pickle,
    )
    config.validate()
    data = selection.load_if_given()
    r = export_model(model, output, config, data, selection.data_dir, overwrite=overwrite)
    v = r["validation"]
    main = v["pytorch"]["main_metric"]
    fused = ", ".join(f"{k} {n}" for k, n in (r["fusion"] or {}).get("fused_operators", {}).items()) or "none"
    if "auto" in r:
        c = r["auto"]["candidates"]
        console.print(
            "measured here: "
            + ", ".join(f"{k} {v['latency_p50_ms']:.2f} ms" for k, v in c.items() if "latency_p50_ms" in v)
            + f"; chose {r['auto']['chosen']}"
        )
    console.print(f"{r['precision']} ONNX artifact: {r['size_bytes'] / 2**20:.1f} MiB; fused: {fused}")
    vocab = (r.get("compaction") or {}).get("vocabulary")
    if vocab:
        cov = vocab["coverage"].get("confirmation", vocab["coverage"]["heldout"])
        console.print(
            f"vocabulary: {vocab['kept_size']} of {vocab['original_size']} tokens kept; "
            f"{cov['outside_percent']:.2f}% of held-out tokens outside it, "
            f"{cov['unknown_after_percent']:.2f}% now unknown"
        )
    console.print(
        f"held-out {main}: PyTorch {v['pytorch']['metrics'][main]:.2f}, ONNX "
        f"{v['onnx']['metrics'][main]:.2f} (drop {v['drop']:+.2f}, limit {v['max_drop']})"
    )
    console.print(f"written to {output}/ (model.onnx, config.json, tokenizer, export.json) in {r['seconds']:.0f} s")


@app.command("benchmark")
@task_options()
def benchmark_cmd(
    models: Annotated[
        list[str], typer.Argument(help="Model directories and/or exported artifacts (directories with model.onnx).")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory for benchmark.md, benchmark.json, tradeoff.png and the baseline exports "
            "(default: FIRST_MODEL-benchmark).",
        ),
    ] = None,
    baseline_model: Annotated[
        str | None,
        typer.Option(
            "--baseline-model",
            help="The unpruned model for the baselines (default: the first model's recorded origin).",
        ),
    ] = None,
    no_baselines: Annotated[
        bool, typer.Option("--no-baselines", help="Skip the baselines (not recommended: ratios need them).")
    ] = False,
    lengths: Annotated[
        str, typer.Option("--lengths", help="Fixed sequence lengths to time, comma-separated.")
    ] = "64,128,512",
    latency_examples: Annotated[int, typer.Option(help="Dev requests timed one by one per round.")] = 200,
    throughput_examples: Annotated[int, typer.Option(help="Dev examples in the batch-32 throughput pass.")] = 512,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds after one warm-up round.")] = 3,
    instances: Annotated[
        int | None, typer.Option("--instances", help="Multi-instance workers (default: one per core; 1 skips).")
    ] = None,
    price_per_hour: Annotated[
        float,
        typer.Option(
            "--price-per-hour",
            help="USD per machine hour for the cost per 100M requests (default 0.085: AWS c6i.large on "
            "demand, assumed; 0: omit).",
        ),
    ] = DEFAULT_PRICE_PER_HOUR,
    no_memory: Annotated[
        bool, typer.Option("--no-memory", help="Skip the peak-memory measurement (one process per candidate).")
    ] = False,
    fixed_batch: Annotated[int, typer.Option(help="Batch size of the fixed-length throughput pass.")] = 8,
    breakdown_requests: Annotated[
        int,
        typer.Option(
            help="ONNX rows: dev requests served one at a time on the lean path (session options chosen by timing) "
            "for the breakdown of one request; 0 skips it."
        ),
    ] = 100,
    chain: Annotated[
        list[str] | None,
        typer.Option(
            "--chain",
            help="Rows (names or model paths) of the cumulative view, in order (repeatable; default: every row).",
        ),
    ] = None,
    one_thread_requests: Annotated[
        int,
        typer.Option(
            help="Dev requests timed again at batch 1 with one thread per row (the steadier ratio on a shared "
            "machine), the ONNX rows also with their default threads in the same rounds, for each row's faster "
            "thread count (chosen on half the requests, timed on the other half); 0 skips it, and so does "
            "--threads 1."
        ),
    ] = 100,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Threads of every timed row (ONNX Runtime and PyTorch alike; default: each runtime's own). On a "
            "shared machine one thread is the steadier ratio."
        ),
    ] = None,
    selection: TaskSelection | None = None,
) -> None:
    """Accuracy, latency, throughput, memory, size and cost of models against the baselines, measured in one run."""
    from axformer.benchmark.run import BenchmarkConfig, benchmark

    try:
        lens = tuple(int(x) for x in lengths.split(",") if x.strip())
    except ValueError:
        raise AxformerError(
            f"--lengths {lengths!r}; expected comma-separated token counts such as 64,128,512"
        ) from None
    config = BenchmarkConfig(
        baselines=not no_baselines,
        baseline_model=baseline_model,
        lengths=lens,
        latency_examples=latency_examples,
        throughput_examples=throughput_examples,
        rounds=rounds,
        instances=instances,
        price_per_hour=price_per_hour,
        memory=not no_memory,
        fixed_batch=fixed_batch,
        breakdown_requests=breakdown_requests,
        chain=list(chain) if chain else None,
        threads=threads,
        one_thread_requests=one_thread_requests,
    )
    config.validate()
    data = selection.load_if_given()
    output = output or Path(str(Path(models[0])) + "-benchmark")
    _check_inputs(output, list(models), selection)
    result = benchmark(
        models, output, data, selection.data_dir, config, progress=lambda m: console.print(f"[dim]{m}[/dim]")
    )
    from axformer.benchmark.report import markdown
    from axformer.benchmark.result import BenchmarkResult

    console.print(markdown(BenchmarkResult.from_dict(result)))
    console.print(f"written to {output}/ (benchmark.md, benchmark.json, tradeoff.png)")


@app.command("prune")
def prune_cmd(
    model: Annotated[str, typer.Argument(help="Model directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the physically pruned model.")],
    remove: Annotated[
        list[str],
        typer.Option(
            "--remove",
            "-r",
            help="Components to remove, e.g. L5.attn.head3, L2.ffn.group4of12, L3.attn, L4.ffn, L1 "
            "(repeatable or comma-separated).",
        ),
    ],
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Physically remove named components and save the smaller model (reloads with axformer.load_model)."""
    from axformer.models.loading import load_model, load_tokenizer, save_model
    from axformer.models.record import ModelRecord
    from axformer.surgery.adapters import get_adapter
    from axformer.surgery.prune import count_parameters, current_structure, prune
    from axformer.utils.io import atomic_output_dir

    _check_inputs(output, [model])
    names = [n.strip() for item in remove for n in item.split(",") if n.strip()]
    net = load_model(model, allow_pickle=allow_pickle)
    tok = load_tokenizer(model)
    before = current_structure(net)
    if not before.removed(names).present_layers:
        raise AxformerError(
            f"removing {', '.join(names)} leaves no encoder layer in {model}; keep at least one layer "
            "(a model without layers is a bag-of-embeddings classifier, not a pruned encoder)"
        )
    before_p, before_f = count_parameters(net), before.flops_per_token()
    structure = prune(net, names)
    with atomic_output_dir(output, overwrite=overwrite, keep_partial=False) as work:
        save_model(net, tok, work)
        record = ModelRecord.load(model)
        record.history.append({"stage": "prune", "base_model": str(model), "removed": names})
        record.save(work)
    table = Table(title=f"pruned {model}")
    for col in ("", "parameters", "FLOPs/token @128", "per-layer heads/FFN"):
        table.add_column(col)
    layers = " ".join("-" if l is None else f"{len(l.heads)}/{len(l.neurons)}" for l in structure.layers)
    table.add_row("before", f"{before_p / 1e6:.2f} M", f"{before_f / 1e6:.1f} M", "")
    table.add_row("after", f"{count_parameters(net) / 1e6:.2f} M", f"{structure.flops_per_token() / 1e6:.1f} M", layers)
    console.print(table)
    note = (
        "loads in stock transformers too"
        if get_adapter(net).is_stock(structure)
        else "per-layer structure: load it with axformer.load_model"
    )
    console.print(f"saved to {output} ({note})")


def main() -> None:
    debug = "--debug" in sys.argv
    try:
        app()
    except AxformerError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"axformer: error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("axformer: interrupted; re-run the same command to resume from the last checkpoint")
        sys.exit(130)


if __name__ == "__main__":
    main()
