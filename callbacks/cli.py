"""``ShortErrorParser``: LightningCLI's parser, with config errors told in one line.

Needs jsonargparse (``pip install "gradwatch[examples]"``), as LightningCLI does.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from pytorch_lightning.cli import LightningArgumentParser

from ._cli_errors import short_error

__all__ = ["ShortErrorParser"]


class ShortErrorParser(LightningArgumentParser):
    """LightningCLI's parser whose config errors are one line, "did you mean" included.

    A bad key or value in a config (``after_step: [100]`` for ``after_steps``, ``seed: -1``)
    prints the line that matters, e.g. ``error: trainer.callbacks: GradientCheck: `after_step`
    is no option; did you mean `after_steps`?``, and a tip, instead of the usage of every
    option (50 lines for a Trainer) around jsonargparse's message. ``--help`` prints the usage;
    ``JSONARGPARSE_DEBUG=true`` raises jsonargparse's whole message as an exception. Works for any
    class in the config, not only ``GradientCheck``.

    Example::

        from pytorch_lightning.cli import LightningCLI
        from gradwatch.callbacks.cli import ShortErrorParser

        LightningCLI(MyModel, MyData, parser_class=ShortErrorParser)

    >>> issubclass(ShortErrorParser, LightningArgumentParser)
    True
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Prints the error's one line and a tip to stderr, and exits with status 2."""
        if not self.exit_on_error or _debug():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = [action.dest for action in parser._actions]
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {short_error(message, keys)}\n")
        sys.stderr.write(
            f"tip: `{prog} --help` lists the options; JSONARGPARSE_DEBUG=true shows the parser's "
            "whole message\n"
        )
        self.exit(2)


def _debug() -> bool:
    # jsonargparse's own switch for its whole message (it then raises instead of exiting); it
    # takes "true" or "false", any case.
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true"
