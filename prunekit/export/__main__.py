"""python -m prunekit.export gguf <run>/model [--type f16|q8_0|...] [--out FILE]: a pruned checkpoint as one GGUF
file for llama.cpp / ollama (docs/export.md)."""

import argparse
import logging
import sys

from prunekit.errors import PrunekitError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, as every prunekit entry point
        print(f"error: {message} (usage: python -m prunekit.export gguf <run>/model [--type T] [--out FILE])",
              file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m prunekit.export", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="format", required=True)
    g = sub.add_parser("gguf", help="GGUF for llama.cpp / ollama")
    g.error = parser.error
    g.add_argument("model_dir", help="a checkpoint directory, e.g. <run>/model")
    g.add_argument("--type", default="f16", help="f16 (default), q8_0, bf16, f32, q4_0, q4_1, q5_0, q5_1; K-quants "
                                                 "(q4_k_m, q5_k_m, q6_k, ...) with llama-cpp-python installed")
    g.add_argument("--out", help="output file (default: <run>/model-<type>.gguf)")
    g.add_argument("--cache-dir", help="prunekit cache with converted pip models (default: $PRUNEKIT_CACHE or "
                                       "~/.cache/prunekit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from prunekit.export import gguf as export_gguf  # after parsing: --help stays instant

    try:
        report = export_gguf.export(args.model_dir, args.type, args.out, args.cache_dir)
    except PrunekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
