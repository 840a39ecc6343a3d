#!/usr/bin/env python3
"""The PyTorch side of `sanhak bench train`.

Builds the same model as a Sanhak training program, with the same shapes,
and times training steps (forward, backward, AdamW) on random inputs, f32 on
the CPU. `sanhak bench train` runs it in the same session as the candle
measurement and prints the ratio.

Usage: torch_train.py '<JSON spec>'   (one JSON object on stdout)

Spec fields: program ("image-classifier" | "byte-gpt" | "sentence-classifier"),
batch, warmup, steps, threads, seed, and the program's shapes:
- image-classifier: channels [c1, c2], hidden, classes
- byte-gpt: n_layer, n_embd, n_head, block_size
- sentence-classifier: vocab_size, hidden_size, layers, heads,
  intermediate_size, seq_len, classes

With "mode": "recipe" it instead fine-tunes a lab's model with a recipe on
the lab's data and prints the validation metric (image-classifier only):
base (safetensors path), train_images/train_labels/valid_images/valid_labels
(IDX files), label_offset, classes, channels, hidden, and the recipe's
learning_rate, schedule, warmup_steps, steps, batch_size, weight_decay,
grad_clip, frozen, dropout, seed.

Exit status 3 when PyTorch is not importable (the caller prints that).
"""

import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the machine
    print(json.dumps({"error": f"PyTorch is not importable: {e}"}))
    sys.exit(3)


class ImageClassifier(nn.Module):
    """conv1 3x3 -> ReLU -> pool -> conv2 3x3 -> ReLU -> pool -> fc -> ReLU -> head."""

    def __init__(self, c1, c2, hidden, classes, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * 49, hidden)
        self.head = nn.Linear(hidden, classes)
        self.dropout = dropout

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc(x.flatten(1)))
        x = F.dropout(x, self.dropout, self.training)
        return self.head(x)


class GptBlock(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.attn_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)
        self.heads = heads

    def forward(self, x, mask):
        b, t, c = x.shape
        h = self.heads
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (y.view(b, t, h, c // h).transpose(1, 2) for y in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // h)
        att = att.masked_fill(mask[:t, :t] == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    """nanoGPT-style byte-level GPT, pre-norm blocks, untied lm_head without bias."""

    def __init__(self, n_layer, c, heads, block):
        super().__init__()
        self.wte = nn.Embedding(256, c)
        self.wpe = nn.Embedding(block, c)
        self.blocks = nn.ModuleList(GptBlock(c, heads) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(c)
        self.lm_head = nn.Linear(c, 256, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(block, block)))

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for blk in self.blocks:
            x = blk(x, self.mask)
        return self.lm_head(self.ln_f(x))


class BertLayer(nn.Module):
    def __init__(self, h, heads, inter):
        super().__init__()
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=1e-12)
        self.intermediate = nn.Linear(h, inter)
        self.output = nn.Linear(inter, h)
        self.out_norm = nn.LayerNorm(h, eps=1e-12)
        self.heads = heads

    def forward(self, x, ext):
        b, t, h = x.shape
        n = self.heads
        split = lambda y: y.view(b, t, n, h // n).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(h // n) + ext
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        a = self.attn_norm(self.attn_out(ctx) + x)
        return self.out_norm(self.output(F.gelu(self.intermediate(a))) + a)


class BertClassifier(nn.Module):
    """BERT encoder (post-norm), mean pooling, linear head."""

    def __init__(self, vocab, h, layers, heads, inter, max_pos, classes):
        super().__init__()
        self.word = nn.Embedding(vocab, h)
        self.position = nn.Embedding(max_pos, h)
        self.token_type = nn.Embedding(2, h)
        self.norm = nn.LayerNorm(h, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(h, heads, inter) for _ in range(layers))
        self.classifier = nn.Linear(h, classes)

    def forward(self, ids, mask):
        b, t = ids.shape
        x = self.word(ids) + self.token_type(torch.zeros_like(ids)) + self.position(torch.arange(t))
        x = self.norm(x)
        ext = ((1.0 - mask) * -1e9).view(b, 1, 1, t)
        for layer in self.layers:
            x = layer(x, ext)
        m = mask.unsqueeze(2)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.classifier(pooled)


def build(spec):
    p = spec["program"]
    b = spec["batch"]
    g = torch.Generator().manual_seed(spec.get("seed", 0))
    if p == "image-classifier":
        c1, c2 = spec["channels"]
        model = ImageClassifier(c1, c2, spec["hidden"], spec["classes"])
        x = torch.randn(b, 1, 28, 28, generator=g)
        y = torch.randint(0, spec["classes"], (b,), generator=g)
        loss = lambda: F.cross_entropy(model(x), y)  # noqa: E731
        return model, loss, b, "samples"
    if p == "byte-gpt":
        t = spec["block_size"]
        model = Gpt(spec["n_layer"], spec["n_embd"], spec["n_head"], t)
        x = torch.randint(0, 256, (b, t), generator=g)
        y = torch.randint(0, 256, (b, t), generator=g)
        loss = lambda: F.cross_entropy(model(x).view(-1, 256), y.view(-1))  # noqa: E731
        return model, loss, b * t, "tokens"
    if p == "sentence-classifier":
        t = spec["seq_len"]
        model = BertClassifier(
            spec["vocab_size"],
            spec["hidden_size"],
            spec["layers"],
            spec["heads"],
            spec["intermediate_size"],
            t,
            spec["classes"],
        )
        ids = torch.randint(3, spec["vocab_size"], (b, t), generator=g)
        mask = torch.ones(b, t)
        y = torch.randint(0, spec["classes"], (b,), generator=g)
        loss = lambda: F.cross_entropy(model(ids, mask), y)  # noqa: E731
        return model, loss, b, "samples"
    raise SystemExit(f"unknown program {p!r}")


def read_safetensors(path):
    """Tensors of a safetensors file (F32 only), without the safetensors package."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {e['dtype']}, expected F32")
        a, b = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(e["shape"])
    return out


def read_idx_u8(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[0:2] != b"\0\0" or raw[2] != 8:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    start = 4 + 4 * len(dims)
    return torch.frombuffer(bytearray(raw[start:]), dtype=torch.uint8).reshape(dims)


def load_images(spec, images, labels):
    """The split's examples of the lab's classes, normalised as the runner does."""
    x, y = read_idx_u8(spec[images]), read_idx_u8(spec[labels]).long()
    keep = (y >= spec["label_offset"]) & (y < spec["label_offset"] + spec["classes"])
    x = (x[keep].float() / 255.0 - 0.2860) / 0.3530
    return x.unsqueeze(1), y[keep] - spec["label_offset"]


def lr_at(spec, step):
    peak, warm, total = spec["learning_rate"], spec["warmup_steps"], spec["steps"]
    if warm > 0 and step <= warm:
        return peak * step / warm
    frac = (step - warm) / max(total - warm, 1)
    kind = spec["schedule"]
    if kind == "linear":
        return peak * max(1.0 - frac, 0.0)
    if kind == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    return peak


def run_recipe(spec):
    """Fine-tune the image classifier from the lab's base with a recipe."""
    torch.manual_seed(spec["seed"])
    c1, c2 = spec["channels"]
    model = ImageClassifier(c1, c2, spec["hidden"], spec["classes"], spec["dropout"])
    base = read_safetensors(spec["base"])
    state = model.state_dict()
    for k, v in base.items():
        if not k.startswith("head."):
            state[k].copy_(v)
    frozen = set(spec["frozen"])
    params = [(n, p) for n, p in model.named_parameters() if n.split(".")[0] not in frozen]
    for n, p in model.named_parameters():
        p.requires_grad_(n.split(".")[0] not in frozen)
    decay = [p for n, p in params if p.dim() >= 2]
    no_decay = [p for n, p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr_at(spec, 1),
    )
    xt, yt = load_images(spec, "train_images", "train_labels")
    xv, yv = load_images(spec, "valid_images", "valid_labels")
    g = torch.Generator().manual_seed(spec["seed"])
    order, pos = torch.randperm(len(yt), generator=g), 0
    batch = min(spec["batch_size"], len(yt))
    t0 = time.perf_counter()
    for step in range(1, spec["steps"] + 1):
        if pos + batch > len(yt):
            order, pos = torch.randperm(len(yt), generator=g), 0
        idx = order[pos : pos + batch]
        pos += batch
        model.train()
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in params], spec["grad_clip"])
        for group in opt.param_groups:
            group["lr"] = lr_at(spec, step)
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xv).argmax(1) == yv).float().mean().item()
    return {
        "torch_version": torch.__version__,
        "valid_metric": acc,
        "steps": spec["steps"],
        "wall_s": time.perf_counter() - t0,
    }


def main():
    spec = json.loads(sys.argv[1])
    if spec.get("mode") == "recipe":
        torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
        print(json.dumps(run_recipe(spec)))
        return
    torch.manual_seed(spec.get("seed", 0))
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    model, loss_fn, units, unit = build(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    times, losses = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        lv = loss.item()
        dt = time.perf_counter() - t0
        losses.append(lv)
        if i >= spec["warmup"]:
            times.append(dt)
    step_s = statistics.median(times)
    print(
        json.dumps(
            {
                "torch_version": torch.__version__,
                "threads": torch.get_num_threads(),
                "params": sum(p.numel() for p in model.parameters()),
                "step_ms": step_s * 1e3,
                "per_s": units / step_s,
                "unit": unit,
                "first_loss": losses[0],
                "last_loss": losses[-1],
            }
        )
    )


if __name__ == "__main__":
    main()
