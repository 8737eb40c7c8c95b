"""Does a better-converged original survive the same pruning better? See README.md (BBC News, dev set)."""

import copy
import sys
import time

from axformer.data.batching import encode
from axformer.demo import bundled_model_path
from axformer.inference import run_model
from axformer.models.loading import load_model, load_tokenizer
from axformer.surgery.prune import prune
from axformer.tasks.sources import load_task
from axformer.training.finetune import FinetuneConfig, finetune

epochs, lr, n = float(sys.argv[1]), float(sys.argv[2]), (None if sys.argv[3] == "all" else int(sys.argv[3]))
out = f"/tmp/exp/ft-{epochs}-{lr}-{n}"
data = load_task("bbcnews")
t = time.time()
finetune(
    str(bundled_model_path()),
    data,
    out,
    FinetuneConfig(
        epochs=epochs, learning_rate=lr, batch_size=16, max_train_examples=n, eval_max_examples=300, max_seq_length=128
    ),
    overwrite=True,
)
print("finetune s", time.time() - t)
spec = data.spec
net = load_model(out, spec).eval()
tok = load_tokenizer(out)
dev = data.dev["dev"]
enc = encode(tok, dev, 128)
ref = run_model(net, enc, False, 64, "cpu").logits
acc0 = (ref.argmax(-1) == dev.labels).mean() * 100
for removed in (["L1", "L3", "L0.ffn", "L2.attn"], ["L1", "L3"], ["L2", "L4"], ["L1"]):
    m = copy.deepcopy(net)
    prune(m, removed)
    lg = run_model(m.eval(), enc, False, 64, "cpu").logits
    acc = (lg.argmax(-1) == dev.labels).mean() * 100
    agree = (lg.argmax(-1) == ref.argmax(-1)).mean() * 100
    print(removed, f"dev {acc0:.2f} -> {acc:.2f} ({acc - acc0:+.2f}) agreement {agree:.2f}")
