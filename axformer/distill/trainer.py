"""Task-specific knowledge distillation: ``axformer distill``.

The teacher is a model fine-tuned for the task (by axformer, so its held-out
split is known). The student trains on the teacher's *training part* only:
the held-out split selects the student's checkpoint, exactly as it selected
the teacher's, and the dev set only reports.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from axformer.data.batching import encode
from axformer.distill.augment import embedding_neighbours, input_word_table, later_windows, perturbed_copies
from axformer.distill.objective import DistillConfig, DistillObjective
from axformer.distill.students import derive_student, layer_map, parse_layers
from axformer.errors import AxformerError
from axformer.models.loading import is_local, load_model, load_tokenizer
from axformer.models.record import ModelRecord, task_for
from axformer.surgery.fake_quant import int8_aware, quantization_aware
from axformer.surgery.prune import current_structure
from axformer.tasks.data import Split, TaskData
from axformer.training.finetune import training_split
from axformer.training.loop import FinetuneResult, train_model
from axformer.utils.device import resolve_device


def teacher_task(teacher: str, data: TaskData | None, data_dir) -> TaskData:
    return task_for(teacher, data, data_dir, role="teacher")


def _records_split(model: str, data: TaskData) -> bool:
    record = ModelRecord.load(model) if is_local(model) else ModelRecord()
    return (
        record.split is not None
        and bool(record.task)
        and record.task.get("name") == data.spec.name
        and record.split.train_fingerprint == data.train.fingerprint()
    )


def _same_vocabulary(teacher_tok, student_tok, student: str) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise AxformerError(
            f"student {student} has a different vocabulary from the teacher's; expected a student "
            "that shares the teacher's tokenizer"
        )


def perturbed_inputs(
    config: DistillConfig, data: TaskData, train_part: Split, heldout: Split, teacher: str | os.PathLike
) -> list[tuple[str, ...]]:
    """The perturbed copies of the training part that ``config`` asks for (``augment``), never a text that
    reports (dev), decides or certifies (the held-out split, the decision file): the trainer's, and what a time
    plan counts before it. ``teacher`` (its directory) gives the replacement words of
    ``augment_words="neighbours"``."""
    if not config.augment:
        return []
    reserved = {t for part in (*data.dev.values(), heldout) for t in part.texts}
    if config.selection_data is not None:
        from axformer.evaluation.context import read_decision_data

        reserved |= set(read_decision_data(config.selection_data, data).texts)
    neighbours = None
    if config.augment_words == "neighbours":
        neighbours = embedding_neighbours(load_tokenizer(str(teacher)), input_word_table(teacher), train_part.texts)
    return perturbed_copies(
        train_part.texts,
        config.augment,
        config.augment_rate,
        config.seed,
        reserved,
        min_words=config.augment_min_words,
        neighbours=neighbours,
    )


def distill(
    teacher: str | os.PathLike,
    output: str | os.PathLike,
    student: str | os.PathLike | None = None,
    student_layers: str | list[int] | None = None,
    data: TaskData | None = None,
    data_dir: str | os.PathLike | None = None,
    config: DistillConfig | None = None,
    overwrite: bool = False,
    extra_texts: list[tuple[str, ...]] | None = None,
    augmented: list[tuple[str, ...]] | None = None,
) -> FinetuneResult:
    """Distil ``teacher`` into a student and save the best held-out checkpoint to ``output``.

    ``extra_texts``: unlabelled inputs added to the training part (the teacher's outputs are their targets); any
    that shares a text with a dev, held-out or training input is dropped here. An embedding model then distils
    on single texts: every distinct text of the training pairs and the extra texts.

    The student is ``student`` (any model sharing the teacher's vocabulary; a
    new task head is made for a checkpoint without one; a model axformer
    pruned), or the teacher reduced to ``student_layers``. ``student_layers`` also applies to a given
    student. Re-running the same call resumes an interrupted run.
    """
    config = config or DistillConfig()
    config.validate()
    teacher = str(teacher)
    data = teacher_task(teacher, data, data_dir)
    data.spec.require_stage("distill")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    # the split recorded with the teacher (or, for a teacher axformer did not train, with the student the search
    # derived from it)
    source = (
        teacher
        if _records_split(teacher, data) or student is None or not _records_split(str(student), data)
        else str(student)
    )
    prior, split, train_part, heldout = training_split(source, data, config)
    if split is not prior.split:
        raise AxformerError(
            f"teacher {teacher} records no held-out split for {data.spec.name}; distil from a teacher "
            "fine-tuned by axformer on this task"
        )
    t_net = load_model(teacher, data.spec, allow_pickle=config.allow_pickle, device=device).eval()
    tokenizer = load_tokenizer(teacher)
    if student is not None:
        origin = str(student)
        _same_vocabulary(tokenizer, load_tokenizer(origin), origin)
        net = load_model(origin, data.spec, allow_pickle=config.allow_pickle, device=device)
        prior = ModelRecord.load(origin) if is_local(origin) else ModelRecord()
    else:
        if student_layers is None:
            raise AxformerError("no student: give --student, or --student-layers to derive one from the teacher")
        net, origin = copy.deepcopy(t_net), "teacher"
    layers = None
    if student_layers is not None:
        layers = parse_layers(student_layers, current_structure(net).present_layers)
        net = derive_student(net, layers)
    if config.max_seq_length is None:
        config.max_seq_length = data.spec.default_max_length
    if data.spec.is_qa and (config.windows or extra_texts or config.augment):  # a QA input is a question with
        raise AxformerError(  # its context's windows
            "question answering distils on its training questions (every window of each context) only; expected "
            "no --windows, no --augment and no --calibration-texts"
        )
    given = len(extra_texts or ())
    if extra_texts:  # never a dev, held-out or training text, whoever the caller is
        from axformer.tasks.calibration import distillation_inputs

        seen = [*(t for part in data.dev.values() for t in part.texts), *train_part.texts, *heldout.texts]
        extra_texts = distillation_inputs(extra_texts, seen, data.spec.is_embedding)
    extra = later_windows(tokenizer, train_part.texts, config.max_seq_length, config.windows)
    # ``augmented``: the perturbed copies when the caller already made them (the search's recovery counts them
    # to plan its epochs); otherwise made here
    if augmented is None:
        augmented = perturbed_inputs(config, data, train_part, heldout, teacher)
    # the teacher's outputs are their targets; a classifier's gold-label loss reads only the labelled rows before
    # them, an embedder's gold-scored pairs are trained on beside the single texts it then distils on
    unlabelled = [*extra, *augmented, *(extra_texts or [])]
    if unlabelled and config.hard_weight > 0 and data.spec.is_embedding and not data.spec.has_gold_pairs:
        raise AxformerError(
            f"--hard-weight {config.hard_weight} on {data.spec.name}, whose texts have no gold labels (their "
            "targets are the original's embeddings); expected --hard-weight 0"
        )
    labelled = len(train_part)
    gold = None
    if data.spec.is_embedding and unlabelled:  # an embedder distils on single texts: pairs become their texts
        if config.hard_weight > 0:
            gold = encode(tokenizer, train_part, config.max_seq_length, separate=True)
        singles = dict.fromkeys((t,) for row in [*train_part.texts, *unlabelled] for t in row)
        train_part = Split(train_part.name, list(singles), np.zeros(len(singles), np.float32))
    elif unlabelled:
        labels = np.zeros(len(unlabelled), dtype=train_part.labels.dtype)
        train_part = Split(
            train_part.name, [*train_part.texts, *unlabelled], np.concatenate([train_part.labels, labels])
        )
    mapping = layer_map(net, t_net)
    rounded, bits = [], 4
    if config.qat_block_size or config.qat_table_block_size:
        rounded = quantization_aware(
            net, 4, config.qat_block_size, config.qat_table_block_size, config.qat_attention_inputs
        )
    elif config.qat_int8:
        rounded, bits = int8_aware(net), 8
    if data.spec.is_embedding:
        from axformer.distill.embedding import EmbeddingDistillObjective

        objective = EmbeddingDistillObjective(t_net, config, gold)
    else:
        objective = DistillObjective(t_net, net, config, data.spec.is_regression, mapping, labelled=labelled)
    stage = {
        "stage": "distill",
        "base_model": origin,
        "teacher": teacher,
        "student_layers": layers,
        "structure": current_structure(net).summary(),
        "added_windows": len(extra),
        "augmented_texts": len(augmented),
        "extra_texts": len(extra_texts or ()),
        "extra_texts_left_out": given - len(extra_texts or ()),
        "quantization_aware": {"bits": bits, "matrices": len(rounded)} if rounded else None,
    }
    key = {
        "teacher": teacher,
        "student": origin,
        "layers": layers,
        "structure": current_structure(net).to_dict(),
        "task": data.spec.name,
        "train": data.train.fingerprint(),
        "extra_texts": len(extra_texts or ()),
    }
    return train_model(
        net,
        tokenizer,
        data,
        split,
        train_part,
        heldout,
        Path(output),
        config,
        objective,
        stage,
        prior,
        key,
        device,
        overwrite,
    )
