"""Distil a fine-tuned BBC News teacher into a student made of some of its layers; dev metric and agreement."""

import sys
import time

from axformer.data.batching import encode
from axformer.distill import DistillConfig, distill
from axformer.inference import run_model
from axformer.models.loading import load_model, load_tokenizer
from axformer.tasks.sources import load_task

teacher, layers, epochs, n, lr = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], float(sys.argv[5])
n = None if n == "all" else int(n)
out = f"/tmp/exp/st-{layers}-{epochs}-{n}-{lr}"
data = load_task("bbcnews")
t = time.time()
distill(
    teacher,
    out,
    student_layers=layers,
    data=data,
    config=DistillConfig(
        epochs=epochs, learning_rate=lr, batch_size=32, max_train_examples=n, max_seq_length=128, eval_max_examples=300
    ),
    overwrite=True,
)
print("distill s", time.time() - t)
dev = data.dev["dev"]
tok = load_tokenizer(teacher)
enc = encode(tok, dev, 128)
ref = run_model(load_model(teacher, data.spec).eval(), enc, False, 64, "cpu").logits
lg = run_model(load_model(out, data.spec).eval(), enc, False, 64, "cpu").logits
acc0 = (ref.argmax(-1) == dev.labels).mean() * 100
acc = (lg.argmax(-1) == dev.labels).mean() * 100
print(
    layers,
    epochs,
    n,
    lr,
    f"dev {acc0:.2f} -> {acc:.2f} ({acc - acc0:+.2f}) agreement {(lg.argmax(-1) == ref.argmax(-1)).mean() * 100:.2f}",
)
