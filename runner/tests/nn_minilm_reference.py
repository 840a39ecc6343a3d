#!/usr/bin/env python3
"""Independent reference for the MiniLM test in runner/src/nn/bert.rs.

Computes all-MiniLM-L6-v2 sentence embeddings with numpy only (its own
safetensors reader, WordPiece tokenizer for lower-case ASCII text, BERT
forward pass, mean pooling and L2 normalisation) and prints the token ids, the
first embedding values and the pairwise cosine similarities that the Rust test
compares against.

Usage: python3 nn_minilm_reference.py MODEL_DIR
"""
import json
import math
import struct
import sys
import unicodedata

import numpy as np

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
]


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[meta["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(meta["shape"]).astype(np.float64)
    return out


def tokenize(text, vocab):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words = []
    cur = ""
    for c in text:
        if c.isspace():
            if cur:
                words.append(cur)
            cur = ""
        elif unicodedata.category(c).startswith("P") or c in "$+<=>^`|~":
            if cur:
                words.append(cur)
            words.append(c)
            cur = ""
        else:
            cur += c
    if cur:
        words.append(cur)
    ids = [vocab["[CLS]"]]
    for w in words:
        start = 0
        while start < len(w):
            end = len(w)
            piece = None
            while end > start:
                sub = w[start:end] if start == 0 else "##" + w[start:end]
                if sub in vocab:
                    piece = sub
                    break
                end -= 1
            if piece is None:
                ids.append(vocab["[UNK]"])
                break
            ids.append(vocab[piece])
            start = end
    ids.append(vocab["[SEP]"])
    return ids


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


erf = np.vectorize(math.erf)


def embed(ids, W, cfg):
    h = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    d = h // nh
    t = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:t] \
        + W["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda y, n: y @ W[p + n + ".weight"].T + W[p + n + ".bias"]
        q = lin(x, "attention.self.query").reshape(t, nh, d).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(t, nh, d).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(t, nh, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(t, h)
        a = layer_norm(lin(ctx, "attention.output.dense") + x,
                       W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        m = lin(a, "intermediate.dense")
        m = 0.5 * m * (1.0 + erf(m / math.sqrt(2.0)))
        x = layer_norm(lin(m, "output.dense") + a, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    e = x.mean(0)
    return e / np.linalg.norm(e)


def main():
    d = sys.argv[1]
    cfg = json.load(open(f"{d}/config.json"))
    vocab = {l.rstrip("\n"): i for i, l in enumerate(open(f"{d}/vocab.txt", encoding="utf-8"))}
    W = load_safetensors(f"{d}/model.safetensors")
    embs = []
    for s in SENTENCES:
        ids = tokenize(s, vocab)
        e = embed(ids, W, cfg)
        embs.append(e)
        print(json.dumps({"sentence": s, "ids": ids, "first8": [round(float(v), 6) for v in e[:8]]}))
    for i in range(len(embs)):
        for j in range(i + 1, len(embs)):
            print(f"cos({i},{j}) = {float(embs[i] @ embs[j]):.6f}")


if __name__ == "__main__":
    main()
