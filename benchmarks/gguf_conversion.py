"""Converting a pip model's GGUF into a stock checkpoint: transformers' three reads of the file vs one shared parse.

transformers reads a GGUF three times to convert it (config, tokenizer, weights), each through a new
`gguf.GGUFReader` whose metadata parse runs in Python (~6 s for Qwen2.5-Coder-0.5B's 151,936-token vocabulary and
its merges). `prunekit.models.load._one_gguf_parse` lets the three share one reader. Same file, one run, each
variant `--repeats` times, interleaved (the faster run counts): seconds, GGUFReader constructions, and whether the
two conversions wrote the same tensors and tokenizer (they must).

Run it with the converted model cached (the first `prune.py` joins the GGUF):

    .venv/bin/python benchmarks/gguf_conversion.py [--gguf ~/.cache/prunekit/models/qwen2.5-coder-0.5b-instruct.gguf]
"""

import argparse
import contextlib
import importlib
import tempfile
import time
from pathlib import Path
from unittest import mock

import gguf
from safetensors.torch import load_file

conversion = importlib.import_module("prunekit.models.load")  # the module (prunekit.models.load is the function)


def convert(path: Path, out: Path, shared: bool) -> tuple[float, int]:
    """Seconds and GGUFReader constructions (the parses) of one conversion of `path` into `out`; not `shared`:
    transformers' own three reads (the shared-parse wrapper made a no-op)."""
    stock, parses = gguf.GGUFReader, [0]

    def counted(*args, **kwargs):
        parses[0] += 1
        return stock(*args, **kwargs)

    own_reads = mock.patch.object(conversion, "_one_gguf_parse", contextlib.nullcontext)
    with mock.patch.object(gguf, "GGUFReader", counted), (contextlib.nullcontext() if shared else own_reads):
        t = time.perf_counter()
        conversion._gguf_to_dir(path, out)
        return time.perf_counter() - t, parses[0]


def same_outputs(a: Path, b: Path) -> bool:
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    tensors = ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)
    return tensors and (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path,
                    default=Path("~/.cache/prunekit/models/qwen2.5-coder-0.5b-instruct.gguf").expanduser())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scratch", type=Path, default=None, help="where the conversions are written (a temp dir)")
    args = ap.parse_args()
    if not args.gguf.is_file():
        raise SystemExit(f"--gguf={args.gguf}: no such file (run prune.py once to join the pip parts)")
    best: dict[bool, tuple[float, int]] = {}
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        for r in range(args.repeats):
            for shared in (False, True):
                seconds, parses = convert(args.gguf, Path(tmp) / f"{shared}-{r}", shared)
                if shared not in best or seconds < best[shared][0]:
                    best[shared] = (seconds, parses)
        same = same_outputs(Path(tmp) / "False-0", Path(tmp) / "True-0")
    base = best[False][0]
    print(f"{args.gguf.name} ({args.gguf.stat().st_size / 1e6:.0f} MB), best of {args.repeats}")
    print(f"{'variant':>22} {'parses':>7} {'seconds':>8} {'speed-up':>9}")
    for shared, name in ((False, "three reads (stock)"), (True, "one shared parse")):
        seconds, parses = best[shared]
        print(f"{name:>22} {parses:>7} {seconds:>8.1f} {base / seconds:>8.2f}x")
    print(f"identical tensors and tokenizer: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
