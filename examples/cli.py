"""The digits classifier under LightningCLI: the gradient-check schedule comes from a YAML config.

Run::

    python examples/cli.py fit --config examples/config.yaml
    python examples/cli.py fit --config examples/config.yaml --print_config   # the resolved config

``config.yaml`` adds :class:`gradwatch.callbacks.GradientCheck` under ``trainer.callbacks`` with
its schedule (``after_steps``) and ``on_fail: raise``, so a failing check stops the run (for CI).
``ShortErrorParser`` tells a mistake in the config in one line (``did you mean `after_steps`?``).
"""

from __future__ import annotations

from digits import DigitsClassifier, DigitsData
from pytorch_lightning.cli import LightningCLI

from gradwatch.callbacks.cli import ShortErrorParser


def main(args: list[str] | None = None) -> LightningCLI:
    """Parses ``args`` (the command line when ``None``) and runs the subcommand."""
    return LightningCLI(DigitsClassifier, DigitsData, args=args, parser_class=ShortErrorParser)


if __name__ == "__main__":
    main()
