"""Launcher of the `keras-lk` command.

It lives outside the `keras_lk` package because importing the package
imports TensorFlow, which prints start-up notices on stderr from C++ that no
setting turns off. The launcher sends that stderr to a temporary file while
the package is imported, and shows it only if the import fails, so that the
command's own output (and a bad argument's one-line error) reads cleanly.
"""

import os
import sys
import tempfile


def _import_quietly():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras_lk.study.cli
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return keras_lk.study.cli


def main():
    try:
        cli = _import_quietly()
    except ImportError as error:
        print(f"keras-lk: error: {error}", file=sys.stderr)
        return 2
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
