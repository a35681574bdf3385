"""PyTorch + transformers training baseline for `agop train`: the same work on the same machine.

A GPT2LMHeadModel from a config.json (random init), windows of the built-in corpus text given as
token ids in a Parquet file (eval-tokens.parquet layout: column `tokens`), AdamW with
betas (0.9, 0.95) and weight decay on the 2-D weights, gradient clipping at 1.0, next-token
loss (labels = input_ids). Prints training tokens/s over the timed steps and the loss path.

  python benches/train_baseline.py --config cfg.json --tokens windows.parquet --batch 16 --steps 20

With --check DIR it instead loads an `agop train` checkpoint folder with
GPT2LMHeadModel.from_pretrained and prints transformers' loss (labels = input_ids) on the
windows of --tokens, mean over every predicted position, as JSON: {"eval_loss": ...}.
"""
import argparse, json, time

import polars as pl
import torch
from transformers import GPT2Config, GPT2LMHeadModel

ap = argparse.ArgumentParser()
ap.add_argument("--config")
ap.add_argument("--tokens", required=True)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--warm", type=int, default=3, help="untimed first steps")
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--check")
a = ap.parse_args()
torch.set_num_threads(a.threads)
windows = torch.tensor(pl.read_parquet(a.tokens)["tokens"].to_list(), dtype=torch.long)

if a.check:
    m = GPT2LMHeadModel.from_pretrained(a.check).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), 8):
            ids = windows[i : i + 8]
            out = m(ids, labels=ids)
            n = ids.shape[0] * (ids.shape[1] - 1)
            total += out.loss.double().item() * n
            count += n
    print(json.dumps({"eval_loss": total / count}))
    raise SystemExit

cfg = GPT2Config(**{k: v for k, v in json.load(open(a.config)).items() if k != "architectures"})
torch.manual_seed(0)
m = GPT2LMHeadModel(cfg).train()
decay = [p for n, p in m.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in m.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
g = torch.Generator().manual_seed(0)
losses = []
start = None
for step in range(a.warm + a.steps):
    if step == a.warm:
        start = time.perf_counter()
    ids = windows[torch.randint(len(windows), (a.batch,), generator=g)]
    loss = m(ids, labels=ids).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    losses.append(round(loss.item(), 3))
secs = time.perf_counter() - start
print(json.dumps({"tokens_per_s": a.steps * a.batch * windows.shape[1] / secs, "losses": losses}))
