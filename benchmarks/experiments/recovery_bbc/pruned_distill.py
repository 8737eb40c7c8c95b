"""Remove components from a BBC News teacher, distil the rest; dev and held-out metric and agreement."""

import sys
import time

from axformer.data.batching import encode
from axformer.distill import DistillConfig, distill
from axformer.inference import run_model
from axformer.models.loading import load_model, load_tokenizer, save_model
from axformer.models.record import ModelRecord
from axformer.surgery.prune import prune
from axformer.tasks.sources import load_task
from axformer.tasks.splits import apply_split

teacher, removed, epochs, tag = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), sys.argv[4]
data = load_task("bbcnews")
net = load_model(teacher, data.spec)
prune(net, removed)
sdir = f"/tmp/exp/pruned-{tag}"
save_model(net, load_tokenizer(teacher), sdir)
ModelRecord.load(teacher).save(sdir)
out = f"/tmp/exp/pd-{tag}"
t = time.time()
distill(
    teacher,
    out,
    student=sdir,
    data=data,
    config=DistillConfig(
        epochs=epochs,
        learning_rate=float(sys.argv[5]) if len(sys.argv) > 5 else 1e-4,
        batch_size=32,
        max_seq_length=128,
        eval_max_examples=300,
    ),
    overwrite=True,
)
print("distill s", time.time() - t)
tok = load_tokenizer(teacher)
rec = ModelRecord.load(teacher)
_, held = apply_split(data, rec.split)
for name, split in (("dev", data.dev["dev"]), ("heldout", held)):
    enc = encode(tok, split, 128)
    ref = run_model(load_model(teacher, data.spec).eval(), enc, False, 64, "cpu").logits
    for which, path in (("pruned", sdir), ("distilled", out)):
        lg = run_model(load_model(path, data.spec).eval(), enc, False, 64, "cpu").logits
        a0 = (ref.argmax(-1) == split.labels).mean() * 100
        a = (lg.argmax(-1) == split.labels).mean() * 100
        print(
            tag,
            name,
            which,
            f"{a0:.2f} -> {a:.2f} ({a - a0:+.2f}) agreement {(lg.argmax(-1) == ref.argmax(-1)).mean() * 100:.2f}",
        )
