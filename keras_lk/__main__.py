"""`python -m keras_lk`: the `keras-lk` command."""

import sys

from keras_lk.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
