"""The README's character-level recipe, trained and sampled: are the samples words?

    python benchmarks/char_recipe.py [--corpus book.txt] [--save]

Without --corpus, a 35 KB English text is cut from the built-in corpus (the prose paragraphs
of Python's own documentation, pydoc_data; code lines left out) so that every machine can
rerun this. Then the README's command trains on it:

    gpurnn train --corpus book.txt --level char-sentences --hidden 128 --seq-len 64 --epochs 10

and samples are drawn at temperatures 1.0, 0.8 and 0.5, each way of starting a sample side by
side on the same model and seeds: after reading the stretch of training text kept in the
checkpoint (what ``gpurnn generate`` does) and from the zero state (what it did before).
The figure is the share of sampled words (runs of letters) that occur in the training text,
case ignored, over all words and over each sample's first word. Writes JSON and a PNG to a
scratch path, or to benchmarks/results/char_recipe.{json,png} with --save.
"""
import argparse
import json
import pathlib
import re
import sys
import tempfile
import time

from gpurnn.tools import cli
from gpurnn.tools.bench import machine_info
from gpurnn.training.generate import known_word_share, load_language_model, sample

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SCRATCH = pathlib.Path(tempfile.gettempdir()) / "gpurnn-bench"
RECIPE = ["--level", "char-sentences", "--hidden", "128", "--seq-len", "64", "--epochs", "10"]
TEMPERATURES = (1.0, 0.8, 0.5)


def builtin_book(size: int = 35_000) -> str:
    """About ``size`` characters of English prose from pydoc_data, deterministically."""
    from pydoc_data.topics import topics
    paragraphs, total = [], 0
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            # prose only: no indented code, no markup-heavy lines
            if not paragraph or paragraph.startswith(" ") or any(c in paragraph
                                                                 for c in "{}[]=<>*`"):
                continue
            paragraph = " ".join(paragraph.split())
            if len(paragraph) < 80:
                continue
            paragraphs.append(paragraph)
            total += len(paragraph) + 2
            if total > size:
                return "\n\n".join(paragraphs) + "\n"
    return "\n\n".join(paragraphs) + "\n"


def plot(results, path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for start, style in (("warm-up", "o-"), ("zero state", "s--")):
        for key, label in (("all_words", "all words"), ("first_word", "first word")):
            ax.plot(TEMPERATURES, [results[start][str(t)][key] for t in TEMPERATURES], style,
                    label=f"{start}, {label}", alpha=1.0 if key == "all_words" else 0.6)
    ax.axhline(0.6, color="gray", lw=0.8, ls=":")
    ax.set(xlabel="temperature", ylabel="share of sampled words in the text", ylim=(0, 1),
           title="char recipe: sampled words that are words of the text")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="text to train on (default: 35 KB of "
                                                       "the built-in corpus)")
    parser.add_argument("--num", type=int, default=50, help="samples per seed (default 50)")
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds (default 3)")
    parser.add_argument("--save", action="store_true",
                        help="record in benchmarks/results/ (default: a scratch path)")
    args = parser.parse_args(argv)
    out = RESULTS if args.save else SCRATCH
    out.mkdir(parents=True, exist_ok=True)                     # fail now, not after the run
    with tempfile.TemporaryDirectory() as folder:
        book = pathlib.Path(args.corpus) if args.corpus else pathlib.Path(folder) / "book.txt"
        if not args.corpus:
            book.write_text(builtin_book(), encoding="utf-8")
        text = book.read_text(encoding="utf-8")
        checkpoint = pathlib.Path(folder) / "book.npz"
        command = ["train", "--corpus", str(book), *RECIPE, "--checkpoint", str(checkpoint),
                   "--device", "cpu", "--samples", "0"]
        start = time.perf_counter()
        if cli.main(command) != 0:
            return 1
        seconds = time.perf_counter() - start
        metrics = [json.loads(line) for line in
                   checkpoint.with_suffix(".jsonl").read_text().splitlines()]
        lm = load_language_model(checkpoint)
        results, examples = {}, {}
        for start_name, warmup in (("warm-up", lm.warmup), ("zero state", None)):
            results[start_name] = {}
            for temperature in TEMPERATURES:
                samples = [s for seed in range(args.seeds)
                           for s in sample(lm.model, lm.vocab, num=args.num, level="char-sentences",
                                           temperature=temperature, warmup=warmup, seed=seed)]
                results[start_name][str(temperature)] = {
                    "all_words": known_word_share(samples, text),
                    "first_word": known_word_share(samples, text, first_only=True),
                    "words": sum(len(re.findall(r"[^\W\d_]+", s)) for s in samples)}
                examples[f"{start_name}, T={temperature}"] = samples[:3]
    valid = [m["valid_ppl"] for m in metrics if m.get("valid_ppl")]
    end = next(m for m in metrics if m.get("event") == "end")
    payload = {"benchmark": "char_recipe", **machine_info(),
               "command": "gpurnn train --corpus book.txt " + " ".join(RECIPE),
               "corpus": args.corpus or "35 KB of pydoc_data prose (builtin_book())",
               "corpus_chars": len(text), "vocab": len(lm.vocab), "steps": lm.step,
               "train_seconds": seconds, "step_ms": end["step_ms"],
               "valid_perplexity": valid[-1] if valid else None,
               "warmup_tokens": None if lm.warmup is None else len(lm.warmup),
               "samples_per_temperature": args.num * args.seeds, "share": results,
               "examples": examples}
    path = out / "char_recipe.json"
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    drawn = plot(results, out / "char_recipe.png")
    print(f"{len(text)} characters, vocabulary {len(lm.vocab)}, {lm.step} steps in "
          f"{seconds:.0f} s, validation perplexity {payload['valid_perplexity']:.1f}")
    print("share of sampled words found in the text (all words / first word of a sample):")
    for start_name, by_t in results.items():
        print(f"  {start_name:<10} " + "   ".join(
            f"T={t}: {v['all_words']:.0%} / {v['first_word']:.0%}" for t, v in by_t.items()))
    print(f"wrote {path}" + (f", {out / 'char_recipe.png'}" if drawn else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
