"""The WildML tutorial's language model, trained the tutorial's way (seeds 000 and 002).

    python scripts/train_lm.py [--corpus reddit-comments-2015-08.csv] [any gpurnn train flag]

Vocabulary 8000, hidden size 80, bptt_truncate 4, plain SGD with learning rate 0.005 on the
loss summed over each sentence, one sentence per step, and the learning rate halved whenever
the measured loss rises. The tutorial measured the training loss every 5 epochs; here the
validation loss is measured every --eval-every steps. Without --corpus it trains on the
built-in corpus; with the tutorial's Reddit CSV, the 'body' column is read. That file is
``data/reddit-comments-2015-08.csv`` in the tutorial's repository:
``git clone https://github.com/dennybritz/rnn-tutorial-rnnlm`` and pass
``--corpus rnn-tutorial-rnnlm/data/reddit-comments-2015-08.csv``. Every
``gpurnn train`` flag can be added to change a setting (``gpurnn train --help`` lists them).
"""
import sys

from gpurnn.tools import cli
from gpurnn.training.config import TrainConfig

TUTORIAL = TrainConfig(
    vocab_size=8000,        # the tutorial's vocabulary_size
    hidden=80,              # hidden_dim (80-100 in the tutorial)
    truncate=4,             # bptt_truncate
    mode="sentence",        # one training example is one sentence ...
    batch_size=1,           # ... and SGD takes one step per sentence
    seq_len=100,            # sentences longer than 100 tokens are cut
    optimizer="sgd",
    lr=0.005,               # learning_rate
    reduction="sum",        # the loss (and gradient) summed over the sentence's words
    schedule="halve",       # "Adjust the learning rate if loss increases"
    clip=0.0,               # the tutorial does not clip
    epochs=1,               # the tutorial ran nepoch=100 on 79k sentences: days on a CPU
    eval_every=1000,
    checkpoint_every=1000,
    checkpoint="train_lm.npz",
)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    args = cli.build_parser().parse_args(["train", *argv])
    return cli.run_reporting_errors(
        "train_lm.py", cli.with_blas_threads(lambda a: cli.run_train(a, base=TUTORIAL)), args)


if __name__ == "__main__":
    sys.exit(main())
