"""``ShortErrorParser``: LightningCLI's parser, with config errors told in one line: the key, the
class, what is wrong, and for a key or class path that is close to one that exists, "did you
mean". jsonargparse's own message (what each branch of a Union refused, the value given) stays
behind ``JSONARGPARSE_DEBUG=true``, and the usage (50 lines for a Trainer) behind ``--help``.

Needs jsonargparse (``pip install "gradwatch[examples]"``), as LightningCLI does.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterable
from typing import NoReturn

from pytorch_lightning.cli import LightningArgumentParser

__all__ = ["ShortErrorParser"]

# jsonargparse's phrases (4.27 to 4.53): a class of a config, a key of that class, an option
# refused at the top, a subcommand's unknown option, argparse's unknown argument.
_CLASS = re.compile(r"Problem with given class_path '([\w.]+)':")
_KEY = re.compile(r'Parser key "([\w.]+)":')
_OPTION = re.compile(r"Option '([\w.]+)' is not accepted")
_NOT_OF_TYPE = re.compile(r"^Not of type \w+: ")
_SUBCOMMAND = re.compile(r"^Subcommand '(\w+)' does not accept option '([\w.]+)'")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (--[\w.]+)")
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")


def short_error(message: str, keys: Iterable[str] = ()) -> str:
    """The one line that matters of jsonargparse's ``message``, with "did you mean" where a
    name is close to one of ``keys`` (the parser's own) or of the class's options.

    Example:
        >>> short_error("Subcommand 'fit' does not accept option 'trainer.max_step'",
        ...             ["trainer.max_steps", "trainer.max_epochs"])
        "fit: 'trainer.max_step' is no option; did you mean 'trainer.max_steps'?"
    """
    lines = [line.strip().removeprefix("- ") for line in message.splitlines()]
    keys = list(keys)
    found = _SUBCOMMAND.match(lines[0])
    if found:
        return f"{found[1]}: '{found[2]}' is no option{_meant(found[2], keys)}"
    found = _UNRECOGNIZED.match(lines[0])
    if found:
        options = [f"--{k}" for k in keys]
        return f"{lines[0]}{_meant(found[1], options)}"
    where = _KEY.match(lines[0])
    for i, line in enumerate(lines):
        named = _CLASS.match(line)
        if named and i + 1 < len(lines):
            path = named[1]
            told = _in_class(path, lines[i + 1 :])
            return f"{where[1]}: {told}" if where else told
    return lines[0]


def _in_class(path: str, lines: list[str]) -> str:
    """What is wrong inside the config of class ``path``, from the lines that follow."""
    name = path.rsplit(".", 1)[-1]
    found = _OPTION.match(lines[0])
    if found:
        return f"{name}: `{found[1]}` is no option{_meant(found[1], _options(path), '`')}"
    found = _KEY.match(lines[0])
    if found and len(lines) > 1:
        # Under a Union (`sample: None | Sample`) each branch says why: our rule's is the one.
        ours = next((line for line in lines[1:] if _NOT_OF_TYPE.match(line)), lines[1])
        told = _NOT_OF_TYPE.sub("", ours)
        # Our own rules already say the class and the argument ("GradientCheck: `seed` ...").
        return told if told.startswith(f"{name}: ") else f"{name}: `{found[1]}`: {told}"
    found = _NO_ATTRIBUTE.search(lines[0])
    if found:
        module = found[1]
        near = _meant(path, [f"{module}.{n}" for n in _names_in(module)], "'")
        return f"class_path '{path}' does not exist{near}"
    return f"{name}: {lines[0]}"


def _meant(key: str, known: Iterable[str], quote: str = "'") -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {quote}{close[0]}{quote}?" if close else ""


def _options(path: str) -> list[str]:
    """The keyword options of class ``path`` (none where it does not import)."""
    module, _, name = path.rpartition(".")
    try:
        init = getattr(importlib.import_module(module), name).__init__
        return [p for p in inspect.signature(init).parameters if p != "self"]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _names_in(module: str) -> list[str]:
    try:
        return [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
    except ImportError:
        return []


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
