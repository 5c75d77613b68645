"""Real PyTorch checkpoints for the checkpoint benchmarks: trains a small GPT-2 (transformers
GPT2Config, 6 layers x 512 wide, vocab 8192, 256 positions: about 23 M parameters) with AdamW
(lr 3e-4) on CPU, on a seeded synthetic token stream that the model can learn (a random Markov
chain: each token has 4 fixed successors with probabilities .5/.25/.15/.1). Every
--steps-between steps (--count checkpoints in all) it writes
  OUTDIR/fp32/step-XXXX/model.safetensors   save_pretrained, fp32
  OUTDIR/bf16/step-XXXX/model.safetensors   save_pretrained of a bf16 copy
  OUTDIR/torchsave/step-XXXX.pt             torch.save of model + optimizer state + step
Deterministic (seeded, 2 threads). Run with the venv of scripts/bench/ckpt_venv.sh:
  python scripts/bench/ckpt_make.py OUTDIR [--steps-between 25] [--count 5] [--layers 6]
"""
import argparse
import copy
import os
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

VOCAB, SEQ, BATCH, SUCC = 8192, 128, 8, 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--steps-between", type=int, default=25)
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)

    # The token source: SUCC fixed successors per token, drawn with fixed probabilities.
    g = torch.Generator().manual_seed(a.seed + 1)
    succ = torch.randint(0, VOCAB, (VOCAB, SUCC), generator=g)
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])

    def batch():
        x = torch.empty(BATCH, SEQ, dtype=torch.long)
        x[:, 0] = torch.randint(0, VOCAB, (BATCH,), generator=g)
        pick = torch.multinomial(probs, BATCH * (SEQ - 1), replacement=True, generator=g)
        pick = pick.view(BATCH, SEQ - 1)
        for t in range(1, SEQ):
            x[:, t] = succ[x[:, t - 1], pick[:, t - 1]]
        return x

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=512, n_layer=a.layers, n_head=8,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"GPT-2: {a.layers} layers, {nparams / 1e6:.1f} M parameters; "
          f"{a.count} checkpoints every {a.steps_between} steps", flush=True)

    t0 = time.time()
    step = 0
    for _ in range(a.count):
        for _ in range(a.steps_between):
            x = batch()
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        name = f"step-{step:04d}"
        model.save_pretrained(os.path.join(a.outdir, "fp32", name))
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(os.path.join(a.outdir, "bf16", name))
        os.makedirs(os.path.join(a.outdir, "torchsave"), exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                   os.path.join(a.outdir, "torchsave", name + ".pt"))
        print(f"step {step}: loss {loss.item():.3f}, {time.time() - t0:.0f} s", flush=True)

    total = 0
    for root, _, files in sorted(os.walk(a.outdir)):
        for f in sorted(files):
            p = os.path.join(root, f)
            if p.endswith((".safetensors", ".pt")):
                n = os.path.getsize(p)
                total += n
                print(f"{n:>12,}  {p}")
    print(f"{total:>12,}  total")


if __name__ == "__main__":
    main()
