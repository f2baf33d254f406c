"""Reviews per second of every text method (xattr.methods.text + InputIBA), batched vs one review at a time,
as a Markdown table; on the CPU and, when CUDA exists, on the GPU.

    python scripts/bench_text.py                        # the trained IMDB LSTM on 16 IMDB test reviews
    python scripts/bench_text.py --reviews 4 --fast     # cheap hyper-parameters (a smoke run)
    python scripts/bench_text.py --methods integrated_gradients lime --devices cuda
    python scripts/bench_text.py --model transformer    # the IMDB transformer (model=imdb_transformer), 256 tokens

Without ``assets/text/imdb_lstm.pt`` (or ``../shared/data/imdb``) it uses a random 4-layer LSTM on random
token ids (the same sizes: vocabulary 20 002, 50-d embeddings, hidden 64, 128 tokens). Each method runs
with its config defaults (conf/method/*.yaml: IG 50 steps, LIME 1000 samples, IBA 10 steps x 10 copies,
InputIBA 20 GAN epochs + 30 steps) unless ``--fast``. "batched" attributes all reviews in one call; "one at
a time" calls the method once per review (unpadded); the speed-up is their ratio.

``--model transformer``: the project's IMDB transformer (``assets/text/imdb_transformer``, a 2-layer BERT of
width 64) on the last 256 tokens, every text method plus attention rollout and Chefer (IBA at ``layer_1``);
without the folder, the same architecture with random weights over a random tokenizer.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from timing import device_name, record  # scripts/ is on sys.path when run as a script
from xattr.methods.input_iba.text import InputIBAText
from xattr.methods.text import (
    TextAttentionRollout,
    TextChefer,
    TextDeepLift,
    TextGradient,
    TextIBA,
    TextInputXGradient,
    TextIntegratedGradients,
    TextLIME,
    TextRandom,
)
from xattr.models.text import LSTMClassifier, load_imdb_lstm

ROOT = Path(__file__).resolve().parents[1]
FAST = {"integrated_gradients": {"n_steps": 8}, "lime": {"n_samples": 64}, "deepshap": {"n_baselines": 3},
        "iba": {"steps": 3, "copies": 2},
        "input_iba_text": {"epochs": 1, "n_targets": 16, "n_groups": 2, "gan_batch": 8, "feat_steps": 2,
                           "feat_copies": 2, "steps": 3, "copies": 2}}
BUILD = {
    "gradient": TextGradient, "input_x_gradient": TextInputXGradient, "integrated_gradients": TextIntegratedGradients,
    "deepshap": TextDeepLift, "lime": TextLIME, "random": TextRandom,
    "iba": lambda net, **kw: TextIBA(net, layer="rnn_4", **kw),
    "input_iba_text": lambda net, **kw: InputIBAText(net, layer="rnn_4", **kw),
}
TRANSFORMER = {**BUILD, "attention_rollout": TextAttentionRollout, "chefer": TextChefer,
               "iba": lambda net, **kw: TextIBA(net, layer="layer_1", **kw),
               "input_iba_text": lambda net, **kw: InputIBAText(net, layer="layer_1", **kw)}


def transformer_data(n: int, max_len: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    from xattr.core.hf import word_tokenizer
    from xattr.models.hf import HFClassifier, load_hf

    folder = ROOT / "assets" / "text" / "imdb_transformer"
    imdb = ROOT.parent / "shared" / "data" / "imdb"
    if (folder / "config.json").is_file() and (imdb / "test.jsonl.gz").is_file():
        from xattr.data.imdb import IMDB

        net = load_hf(folder)
        ds = IMDB(imdb, "test", folder, max_len=max_len, truncate="tail", limit=n)
        return net, ds.collate([ds[i] for i in range(len(ds))])["x"], "trained IMDB transformer, IMDB test reviews"
    import tempfile

    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=20_005, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=256, num_labels=2)
    cfg._attn_implementation = "eager"
    tok = word_tokenizer([f"w{i}" for i in range(20_000)], tempfile.mkdtemp())
    net = HFClassifier(transformers.BertForSequenceClassification(cfg).eval(), tok).eval()
    lengths = torch.randint(max_len // 2, max_len + 1, (n,))
    x = torch.randint(5, 20_005, (n, max_len))
    x[:, 0] = 2
    x[torch.arange(max_len)[None] >= lengths[:, None]] = 0
    return net, x, "random IMDB-sized transformer, random tokens"


def data(n: int, max_len: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    ckpt = ROOT / "assets" / "text" / "imdb_lstm.pt"
    imdb = ROOT.parent / "shared" / "data" / "imdb"
    if ckpt.is_file() and (imdb / "test.jsonl.gz").is_file():
        from xattr.data.imdb import IMDB, collate

        net, vocab = load_imdb_lstm(ckpt)
        ds = IMDB(imdb, "test", vocab, max_len=max_len, truncate="tail", limit=n)
        return net, collate([ds[i] for i in range(len(ds))])["x"], "trained IMDB LSTM, IMDB test reviews"
    torch.manual_seed(0)
    net = LSTMClassifier(20_002, 50, 64, 4).eval()
    lengths = torch.randint(max_len // 2, max_len + 1, (n,))
    x = torch.randint(2, 20_002, (n, max_len))
    x[torch.arange(max_len)[None] >= lengths[:, None]] = 0
    return net, x, "random LSTM, random tokens"


def rate(fn, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reviews", type=int, default=16)
    ap.add_argument("--model", choices=["lstm", "transformer"], default="lstm")
    ap.add_argument("--max-len", type=int, default=None, help="tokens per review (LSTM 128, transformer 256)")
    ap.add_argument("--methods", nargs="*", default=None, choices=list(TRANSFORMER))
    ap.add_argument("--devices", nargs="*", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    ap.add_argument("--fast", action="store_true", help="cheap hyper-parameters (smoke run)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    build = TRANSFORMER if args.model == "transformer" else BUILD
    methods = args.methods or list(build)
    bad = [m for m in methods if m not in build]
    if bad:
        ap.error(f"method {bad[0]} has no {args.model} form; valid choices: {', '.join(build)}")
    if args.model == "transformer":
        net, x, what = transformer_data(args.reviews, args.max_len or 256)
    else:
        net, x, what = data(args.reviews, args.max_len or 128)
    target = net(x).argmax(1).detach()
    lengths = (x != 0).sum(1).tolist()
    print(f"{what}: {x.shape[0]} reviews, {sum(lengths) / len(lengths):.0f} tokens on average; "
          f"{'fast settings' if args.fast else 'config defaults'}\n")
    print("| method | device | batched (reviews/s) | one at a time (reviews/s) | speed-up |")
    print("|---|---|---:|---:|---:|")
    for device in map(torch.device, args.devices):
        net_d, x_d, t_d = net.to(device), x.to(device), target.to(device)
        for name in methods:
            m = build[name](net_d, **(FAST.get(name, {}) if args.fast else {}))
            if m.needs_fit:
                m.fit([{"x": x_d, "mask": x_d != 0}])
            m.attribute(x_d[:1, : lengths[0]], t_d[:1])  # warm-up
            batched = rate(lambda m=m, x=x_d, t=t_d: m.attribute(x, t), len(lengths), device)
            single = rate(lambda m=m, x=x_d, t=t_d: [m.attribute(x[i : i + 1, :n], t[i : i + 1])
                                                     for i, n in enumerate(lengths)], len(lengths), device)
            print(f"| {name} | {device.type} | {batched:.2f} | {single:.2f} | {batched / single:.1f}x |", flush=True)
            record("text", model=args.model, path=f"{name}, batched", device=device_name(device),
                   ms_per_image=1000 / batched, unit="ms per review")


if __name__ == "__main__":
    main()
