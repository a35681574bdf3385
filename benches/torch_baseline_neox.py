"""PyTorch + transformers baseline for GPT-NeoX: the same work as benches/torch_baseline.py
does for GPT-2 (and agop's `measure` does): forward a random-init GPTNeoXForCausalLM, one Gaussian
probe over all logits at all positions, one backward, and per layer the operand outer products of
query_key_value, dense and dense_h_to_4h, the output-side product of dense_4h_to_h, and the
per-head q/k/v pre-rotary blocks, accumulated in float64. Prints tokens/s.

  python benches/torch_baseline_neox.py --layers 12 --embd 768 --heads 12 --inner 3072 --steps 3
"""
import argparse, time, torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--layers", type=int, default=12)
ap.add_argument("--embd", type=int, default=768)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--inner", type=int, default=3072)
ap.add_argument("--vocab", type=int, default=50304)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--save", help="also write the random model here (save_pretrained), for agop")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = GPTNeoXConfig(hidden_size=a.embd, num_attention_heads=a.heads, num_hidden_layers=a.layers,
                    intermediate_size=a.inner, vocab_size=a.vocab, max_position_embeddings=max(2048, a.seq),
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
m = GPTNeoXForCausalLM(cfg).eval()
if a.save:
    m.save_pretrained(a.save)
for p in m.parameters():
    p.requires_grad_(False)
C, H = a.embd, a.heads
hs = C // H

probes = {}
def pre_hook(name):
    def f(mod, args):
        z = torch.zeros_like(args[0], requires_grad=True)
        probes[name] = z
        return (args[0] + z,)
    return f
def out_hook(name):
    def f(mod, args, out):
        z = torch.zeros_like(out, requires_grad=True)
        probes[name] = z
        return out + z
    return f
for l, layer in enumerate(m.gpt_neox.layers):
    att = layer.attention
    att.query_key_value.register_forward_pre_hook(pre_hook(f"{l}.qkv"))
    att.query_key_value.register_forward_hook(out_hook(f"{l}.qkv_out"))
    att.dense.register_forward_pre_hook(pre_hook(f"{l}.dense"))
    layer.mlp.dense_h_to_4h.register_forward_pre_hook(pre_hook(f"{l}.fc"))
    layer.mlp.dense_4h_to_h.register_forward_hook(out_hook(f"{l}.proj_out"))

acc = {}
def step(ids):
    probes.clear()
    logits = m(ids).logits
    v = torch.randn_like(logits)
    (logits * v).sum().backward()
    for n, z in probes.items():
        g = z.grad.reshape(-1, z.shape[-1])
        if n.endswith("qkv_out"):
            blocks = g.reshape(-1, 3 * H, hs).transpose(0, 1)  # (3H, N, hs): per head q, k, v
            K = torch.bmm(blocks.transpose(1, 2), blocks)
            acc[n] = acc.get(n, 0) + K.double()
        else:
            acc[n] = acc.get(n, 0) + (g.T @ g).double()

ids = torch.randint(0, a.vocab, (a.batch, a.seq))
step(ids)  # warm-up
t = time.perf_counter()
for _ in range(a.steps):
    step(torch.randint(0, a.vocab, (a.batch, a.seq)))
dt = time.perf_counter() - t
print(f"tokens/s {a.steps * a.batch * a.seq / dt:.1f}")
