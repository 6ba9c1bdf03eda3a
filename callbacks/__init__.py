"""Lightning integration of gradwatch (installed as ``gradwatch.callbacks``).

``GradientCheck`` is the callback for ``pytorch_lightning.Trainer``; users of the unified
``lightning`` package import the same callback from ``gradwatch.callbacks.lightning``.

Example:
    >>> from gradwatch.callbacks import GradientCheck
    >>> GradientCheck(after_steps=[100], on_fail="raise").schedule.after_steps
    (100,)
"""

from __future__ import annotations

from pytorch_lightning import Callback

from ._hooks import GradientCheckBase
from ._outcome import GradientCheckError, GradientCheckWarning

__all__ = ["GradientCheck", "GradientCheckError", "GradientCheckWarning"]


class GradientCheck(GradientCheckBase, Callback):
    """Checks backprop at random initialization and again after N steps, logged to TensorBoard.

    The course material's check, run by the Trainer: J is the module's own loss, θ every trainable
    parameter; each component of ∇J is estimated as (J(θ+ε·e_i) − J(θ−ε·e_i)) / 2ε and compared
    with backprop, each component read against J's measured noise (agrees, disagrees, not
    judged), and each parameter's verdict follows from its readings and the bands
    ``thresholds`` (the material's: 1e-7 and 1e-3; see :mod:`gradwatch.verdict`).

    A check runs once per scheduled step, between optimizer steps, on that step's training batch
    before ``training_step`` sees it (with gradient accumulation: on the first micro-batch of the
    optimizer step). It works on float64 copies of the parameters and buffers, so training is left
    bit-for-bit as it was (weights, optimizer state, RNG streams, BatchNorm statistics), and
    ``self.log`` calls made while J is evaluated are dropped. What J leaves on the module and its
    submodules (attributes added or rebound, items appended to ``self.training_step_outputs``,
    counters, tensors written in place, torchmetrics states) is put back after every evaluation.
    Other steps cost one integer comparison.

    J is ``training_step(batch, batch_idx)``'s loss (a tensor or the ``"loss"`` entry of a dict),
    regularization included. A module may define ``gradcheck_loss(self, batch)`` returning J
    instead (required with manual optimization). What J does outside the module is not undone:
    a ``training_step`` with such side effects (``self.logger.experiment.add_scalar``, prints,
    files) should define ``gradcheck_loss``, so the check evaluates the loss alone. A module that
    gives no scalar J this way stops ``fit`` at the first check, whatever ``on_fail`` says; a
    check due on a batch ``training_step`` skips (returns None) after an earlier check of the run
    had J runs on the next batch instead.

    Under DDP (``strategy="ddp"``, ``"ddp_spawn"``) the processes share each check: all check
    process 0's batch, each evaluates its share of the components (see
    :class:`gradwatch.Partition`), and all end with the same report, which rank zero logs. A check
    that cannot finish, in any process (the loss raises, runs out of memory), is a failed check
    whose message says why; training goes on, unless ``on_fail="raise"``. The loss must not run
    collectives (``all_reduce``, SyncBatchNorm): each process evaluates its own share. A check
    stopped by KeyboardInterrupt changes nothing and is not recorded, so it runs again after a
    resume.

    Logged at the step of the batch's own ``self.log`` values, under ``name`` (``gradcheck``
    unless told). Every logger gets the scalars: ``gradcheck/difference`` (the material's
    formula), ``gradcheck/verdict`` (−1 not judged, 0 pass, 1 warn, 2 fail),
    ``gradcheck_parameters/<parameter>`` (each parameter's own difference, NaN where not judged)
    and ``gradcheck_details/…`` (rounding floor, kinks, counts). A TensorBoard logger, from
    either Lightning package, also gets the card ``GradientCheck/gradcheck`` (an image: the
    verdict, every check's difference against the bands on a log scale, the parameters worst
    first), the text ``gradcheck/report`` (the whole report), the histogram
    ``gradcheck_details/log10_abs_error`` and a Custom Scalars page with the difference against
    the pass/fail bands. Each report is also written as JSON next to the logger's files,
    ``<log_dir>/gradcheck/step_<N>.json`` (read it with :func:`gradwatch.load_report`). The
    console gets one line per check; a check that did not pass says its whole report once: in
    the warning or the error that ``on_fail`` asks for, else on the console. Several
    callbacks (one per sub-network, say) each need their own ``name``.

    A check that cannot finish because of the module's code (the loss, the forward, a backward
    raises) is a failed check whose message says why and where; an error inside gradwatch itself
    is a warning that says so (with what to attach to a bug report), no verdict is logged, and
    training goes on.

    Args:
        at_init: check on the first batch, before the first optimizer step (random init).
        after_steps: check when ``trainer.global_step`` reaches each of these steps. The schedule
            counts optimizer steps, as ``max_steps`` does; the check's values are logged at the
            step of the batch's ``self.log`` values, which is lower with several optimizers.
        every_n_steps: also check at n, 2n, 3n, ... optimizer steps; ``None`` for no such checks.
        epsilon: the step ε of the two-sided difference (the material's 1e-7), or ``"auto"`` for
            a step per component fitted to the check's precision.
        sample: ``None`` checks every component of θ; an int, a seeded sample of that many
            spread over every parameter tensor (for large models).
        include: glob(s) of parameter names that make up θ, e.g. ``"decoder.*"``; ``None`` for all.
        dropout: ``"off"`` makes dropout layers the identity during the check; ``"freeze"`` draws
            one mask and reuses it for every evaluation.
        mode: ``"components"`` compares every (or every sampled) component; ``"directions"``
            compares random directions per tensor and narrows failing tensors down by bisection
            (for models of millions of parameters).
        thresholds: the bands, as the engine takes them: ``None`` for the material's (1e-7,
            1e-3), a :class:`gradwatch.Thresholds` or a mapping
            ``{"pass_max": ..., "warn_max": ...}`` (in a config: ``thresholds: {pass_max: 1e-6}``).
        seed: seed of the component sample and of random draws inside J.
        log_worst: rows of the worst-components table in TensorBoard (0: no table).
        on_fail: what a failed check does: ``"warn"`` (a :class:`GradientCheckWarning`
            whose message is the report), ``"raise"`` (stop ``fit`` with
            :class:`GradientCheckError`, for CI) or ``"ignore"`` (log only). A check that could
            judge nothing (verdict "not judged") warns unless ``"ignore"``; it never stops ``fit``.
        name: the prefix of every logged tag, also in console lines, e.g.
            ``"gradcheck/encoder"``: a non-empty str without spaces.
        progress: show a bar with the evaluations of J done and the time left, on stderr (its
            own line, below Lightning's bar), for a check that runs more than a couple of
            seconds; ``False`` shows nothing.
        training_path: also compare the gradient that trains with the checked one (see
            :mod:`gradwatch.training_path`): the module as the Trainer runs it (compiled, in its
            own dtype, under the precision plugin's ``train_step_context()``: autocast for
            ``"bf16-mixed"``), per parameter against the float64 gradient; a parameter off by
            more than twice the eager model's error in that precision (plus a rounding floor)
            fails the check. Logged as ``gradcheck/training_path/verdict`` and, per parameter,
            ``gradcheck/training_path/{error,eager_error,ratio}/<parameter>``. Costs seven forward
            and backward passes in the training precision and one in float64 per check.
        replica_budget: under ``ModelParallelStrategy``, the bytes the gathered float64 replica
            may take per process (``None``: no limit); above it the check runs in place on the
            shards (see :func:`gradwatch.sharded.check_sharded`). Ignored under other
            strategies.
        warn_not_judged: warn when a check passes with tensors not judged (what the pass rests
            on, and what to do); ``False``, or ``on_fail="ignore"``, keeps it to the console line.

    Attributes:
        schedule: the validated schedule (``at_init``, sorted ``after_steps``, ``every_n_steps``).
        reports: ``{global_step: GradCheckReport}`` of the checks this object ran in its latest
            ``fit`` (each ``fit`` starts afresh).
        checked_steps: every step checked so far in the latest ``fit``, also those restored from
            a checkpoint (which are not checked again on resume).
        training_path: whether each check also compares the gradient that trains (the option).

    Under ``ModelParallelStrategy`` (FSDP2's ``fully_shard``, tensor parallelism in
    ``configure_model``) every process gathers the model's full tensors into a float64 replica
    and the processes share the check of J, the mean over their batches; with
    ``training_path=True`` the gradient after the sharded collectives is compared too (see
    ``docs/sharded.md``). Strategies the check cannot read (``FSDPStrategy``, DeepSpeed, XLA,
    unknown ones) are refused at setup.

    Raises:
        TypeError, ValueError: at construction, for an argument outside its accepted values;
            at setup, for a strategy the check cannot read; when ``fit`` starts (before any
            step), for a module the check cannot use (no scalar J, no trainable parameter,
            SyncBatchNorm layers under DDP, DTensor parameters outside ModelParallelStrategy).

    Example::

        from pytorch_lightning import Trainer
        from gradwatch.callbacks import GradientCheck

        trainer = Trainer(max_steps=500, callbacks=[GradientCheck(after_steps=[100])])
        trainer.fit(model, datamodule)  # checks at step 0 and step 100

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: gradwatch.callbacks.GradientCheck
              init_args: {after_steps: [100], on_fail: raise}

    >>> GradientCheck(after_steps=[200, 100]).schedule
    Schedule(at_init=True, after_steps=(100, 200), every_n_steps=None)
    """
