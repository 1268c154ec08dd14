"""What the single-device and DDP memory strategies share: profile on the first batch, plan, apply, report."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from engage.memory.blocks import NoBlocksError
from engage.memory.budget import format_bytes
from engage.memory.errors import BlocksWithoutBackward, PlannedOutOfMemoryError, UnsupportedSetupError
from engage.memory.options import StrategyOptionError, check_options
from engage.memory.plan import Plan
from engage.memory.planner import MemoryPlanner
from engage.memory.profile import Profile, input_signature, model_signature
from engage.memory.report import log_steady_step, report_plan
from engage.memory.step_state import cache_off
from engage.memory.step_timing import SteadyStepTimer
from engage.memory.watch import StepWatch


@contextlib.contextmanager
def _silenced_logging(module: Any) -> Iterator[None]:
    # Profiling runs the user's training_step several times on one batch; its self.log calls must not count.
    module.log = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del module.log
        del module.log_dict


@contextlib.contextmanager
def _optimizers_paused(optimizers: Sequence[Any]) -> Iterator[None]:
    """A manually optimized ``training_step`` steps its optimizers itself; while profiling those steps must
    neither train nor count as trainer steps: each ``step`` only runs its closure, if any."""

    def paused(closure: Any = None, **kwargs: Any) -> Any:
        return closure() if closure is not None else None

    for opt in optimizers:
        opt.step = paused
    try:
        yield
    finally:
        for opt in optimizers:
            del opt.step


@contextlib.contextmanager
def _schedules_kept(trainer: Any) -> Iterator[None]:
    """A manually optimized ``training_step`` may step its learning-rate schedulers, which set its
    optimizers' learning rates: both are put back after profiling, with the optimizers' other
    hyperparameters (momentum, weight decay)."""
    schedulers = [(c.scheduler, copy.deepcopy(c.scheduler.state_dict())) for c in trainer.lr_scheduler_configs]
    groups = [
        (opt, [copy.deepcopy({k: v for k, v in group.items() if k != "params"}) for group in opt.param_groups])
        for opt in trainer.optimizers
    ]
    try:
        with warnings.catch_warnings():
            # the optimizers' steps are paused: torch would take a scheduler's step for one before them
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            yield
    finally:
        for scheduler, state in schedulers:
            scheduler.load_state_dict(state)
        for opt, saved in groups:
            for group, values in zip(opt.param_groups, saved):
                group.update(values)


def _shape_key(batch: Any) -> tuple:
    return tuple(tuple(t.shape) for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor))


def check_strategy_kwargs(strategy: str, base: type, kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments neither the memory strategy nor its Lightning ``base`` takes,
    naming the strategy and the arguments it does take (Lightning's own error names its class);
    a base that passes further arguments on is left to check them."""
    from engage.core.config.validate import keywords_not_taken

    # none where the base passes the rest on (DDP's to DistributedDataParallel), which checks them
    unknown, taken = keywords_not_taken(base.__init__, kwargs)
    if unknown:
        ours = "budget, solver, blocks, decisions, profile_path, verify, print_plan, chunked_loss, loss_chunks"
        raise TypeError(f"{strategy} got unexpected keyword arguments {', '.join(unknown)}; it takes {ours}, "
                        f"and Lightning's {', '.join(taken)}")  # fmt: skip


class _MemoryPlanning:
    """Mixin for Lightning strategies; the host class provides ``lightning_module``, ``root_device``, etc."""

    def _init_planning(
        self,
        budget: str | int | float,
        solver: str,
        blocks: Sequence[str] | None,
        decisions: Sequence[str],
        profile_path: str | None,
        verify: bool,
        print_plan: bool,
        chunked_loss: bool = False,
        loss_chunks: int = 8,
    ) -> None:
        for name, flag in (("verify", verify), ("print_plan", print_plan), ("chunked_loss", chunked_loss)):
            if not isinstance(flag, bool):  # "no" would be true
                raise ValueError(f"{name}={flag!r} must be True or False")
        if profile_path is not None and not isinstance(profile_path, (str, os.PathLike)):
            raise ValueError(f"profile_path={profile_path!r} must be a file path (str) or None")
        if isinstance(loss_chunks, bool) or not isinstance(loss_chunks, int) or loss_chunks < 1:
            raise ValueError(f"loss_chunks={loss_chunks!r} must be a positive int, such as 8")
        self.chunked_loss = chunked_loss
        self.loss_chunks = loss_chunks
        self.budget = budget
        self.solver = solver
        if isinstance(blocks, str):
            raise StrategyOptionError("blocks", f"blocks={blocks!r}; give a list of module names, such as ['net']")
        blocks = list(blocks) if blocks is not None else None  # once: an iterator is read once
        if blocks is not None and not blocks:
            raise StrategyOptionError(
                "blocks", "blocks=[] names no module; leave blocks out (None) to plan every repeated structure"
            )
        self.blocks = list(blocks) if blocks is not None else None
        self.decisions = check_options(budget, solver, decisions)
        self.profile_path = profile_path
        self.verify = verify
        self.print_plan = print_plan
        self.planner: MemoryPlanner | None = None
        self.plans: dict[tuple, Plan] = {}
        self.plan: Plan | None = None
        self.profile: Profile | None = None
        self.measured_peak: int | None = None
        #: the median time of a whole step in steady state under the current plan, once measured
        self.measured_step_s: float | None = None
        self.step_timer: SteadyStepTimer | None = None
        self.watch: StepWatch | None = None
        self._cache_warned = False

    def _setup_planner(self, blocks: Sequence[str] | None = None) -> None:
        """The planner of ``blocks`` (default: the ``blocks`` option, or every repeated structure)."""
        if self.planner is None:
            self.planner = MemoryPlanner(
                self.lightning_module,
                blocks=blocks if blocks is not None else self.blocks,
                device=self.root_device,
                decisions=self.decisions,
            )
            self.watch = StepWatch(self.planner.runtime, self.root_device)
            self.step_timer = SteadyStepTimer(self.root_device)

    def _replan_blocks(self, names: Sequence[str]) -> None:
        """Plan ``names`` only from now on: the planner is made again for them (on every rank, from
        the plan rank 0 shares, under DDP)."""
        assert self.planner is not None
        self.planner.remove()
        self.planner = None
        self._setup_planner(list(names))

    def _profile_without_frozen(self, profile_step: Any) -> Profile:
        """Profile; blocks found in the model's repeated structures (not named by ``blocks=``)
        that take no part in backward (frozen layers before any that train, a teacher run without
        gradients) are left out, with a warning, and the step profiled again without them."""
        assert self.planner is not None
        try:
            return profile_step()
        except BlocksWithoutBackward as exc:
            if self.blocks is not None:
                raise  # named by the user: the line says to leave them out
            left = [name for name, _ in self.planner.runtime.blocks if name not in exc.names]
            if not left:
                raise NoBlocksError(
                    f"no block of {type(self.lightning_module).__name__}'s repeated structures takes part in "
                    "backward (all frozen, or run without gradients); pass blocks=['name.of.block', ...] naming "
                    "modules that train"
                ) from None
            warnings.warn(
                f"blocks {', '.join(exc.names)} take no part in backward (frozen, or run without gradients): "
                "not planned",
                stacklevel=2,
            )
            self._replan_blocks(left)
            return profile_step()

    def _profile_step(self, args: tuple, kwargs: dict) -> Any:
        module = self.lightning_module

        def step() -> None:
            with self.precision_plugin.train_step_context():
                out = module.training_step(*args, **kwargs)
            if not module.automatic_optimization:
                return  # training_step ran its own backward (its optimizer steps are skipped while profiling)
            loss = out["loss"] if isinstance(out, dict) else out
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                raise UnsupportedSetupError(
                    f"training_step returned {type(out).__name__}, not a loss that requires grad: the memory "
                    "planner profiles forward and backward; return the loss (or {'loss': loss})"
                )
            loss.backward()

        return step

    def _is_rank_zero(self) -> bool:
        return getattr(self, "global_rank", 0) == 0

    def _share(self, plan: Plan | None, profile: Profile | None, inputs: str) -> tuple[Plan, Profile | None]:
        """Single device: nothing to share (overridden under DDP, where ``inputs`` must match rank 0's)."""
        assert plan is not None
        return plan, profile

    def _load_profile(self, signatures: tuple[str, str]) -> Profile | None:
        """The saved profile for this model and input, ``None`` if there is none to reuse."""
        if not self.profile_path or self.plans or not os.path.exists(self.profile_path):
            return None
        profile = Profile.load(self.profile_path)
        assert self.planner is not None
        found = [name for name, _ in self.planner.runtime.blocks]
        if self.blocks is None and profile.units != found and set(profile.units) < set(found):
            # profiled without the blocks that take no part in backward: plan those it holds
            self._replan_blocks(profile.units)
            signatures = (model_signature(self.lightning_module, self.planner.runtime.blocks), signatures[1])
        profile.check_matches(*signatures, source=f"profile_path={self.profile_path!r}")
        return profile

    def _make_plan(self, args: tuple, kwargs: dict, reuse: bool = True) -> None:
        assert self.planner is not None
        module = self.lightning_module
        key = _shape_key((args, kwargs))
        roots = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        signatures = (model_signature(module, self.planner.runtime.blocks), input_signature(roots))
        plan = profile = None
        if self._is_rank_zero():
            if reuse and key in self.plans:
                plan, profile = self.plans[key], self.planner.profile_
            else:
                plan, profile = self._profile_and_solve(args, kwargs, roots, signatures)
        plan, profile = self._share(plan, profile, signatures[1])
        if list(plan.names) != [name for name, _ in self.planner.runtime.blocks]:
            self._replan_blocks(plan.names)  # rank 0 left blocks out that take no part in backward
        self.planner.apply(plan)
        self.planner.profile_ = profile
        self.plan, self.profile = plan, profile
        self.plans[key] = plan
        assert self.watch is not None
        self.watch.follow(plan, profile)
        if self.step_timer is not None:
            self.step_timer.planned()

    def _profile_and_solve(
        self, args: tuple, kwargs: dict, roots: list[torch.Tensor], signatures: tuple[str, str]
    ) -> tuple[Plan, Profile]:
        assert self.planner is not None
        module = self.lightning_module
        trainer = module.trainer
        step = self._profile_step(args, kwargs)
        paused = _optimizers_paused(getattr(self, "_lightning_optimizers", []))
        with _silenced_logging(module), paused, _schedules_kept(trainer):
            profile = self._load_profile(signatures)
            if profile is not None:
                self.planner.profile_ = profile
            else:
                profile = self._profile_without_frozen(
                    lambda: self.planner.profile(  # type: ignore[union-attr]
                        step,
                        optimizers=list(trainer.optimizers),
                        roots=roots,
                        grads_persist=trainer.accumulate_grad_batches > 1,
                        # Lightning zeroes gradients after training_step: the last step's are alive in forward.
                        grads_in_forward=True,
                    )
                )
                if self.profile_path and not self.plans:
                    profile.save(self.profile_path)
            measured = None
            if self.verify:
                plan, self.measured_peak, measured = self.planner.fit(self.budget, step, roots, self.solver)
                for p in module.parameters():
                    p.grad = None
            else:
                plan = self.planner.plan(self.budget, self.solver, profile)
        if self.print_plan:
            from rich.console import Console

            Console().print(plan.table(self.measured_peak))
        if trainer.is_global_zero:
            # beside the run's logs: the first logger's folder, else the trainer's (not through
            # Trainer.log_dir, a collective that only rank 0 would enter here)
            logs = next((getattr(logger, "log_dir", None) for logger in trainer.loggers), None)
            folder = Path(logs or trainer.default_root_dir) / "memory_plan"
            report_plan(trainer.loggers, plan, profile, self.measured_peak, measured, folder, trainer.global_step)
        return plan, profile

    def _oom(self, exc: BaseException) -> PlannedOutOfMemoryError:
        peak = torch.cuda.max_memory_allocated(self.root_device) if self.root_device.type == "cuda" else None
        table = self.plan.render(peak) if self.plan is not None else "(no plan yet)"
        measured = format_bytes(peak) if peak is not None else "unknown"
        return PlannedOutOfMemoryError(
            f"out of memory in a planned step (measured peak {measured}, budget {self.budget}); "
            f"lower the budget or leave room for other allocations:\n{table}\n{exc}"
        )

    def _needs_plan(self, args: tuple, kwargs: dict) -> tuple[bool, bool]:
        """Whether this step needs a plan, and whether a cached one for its shapes may serve."""
        left = self.watch.check() if self.watch is not None else None
        new_shape = self.plan is not None and _shape_key((args, kwargs)) not in self.plans
        if left is not None:
            warnings.warn(f"memory plan exceeded: {left}; profiling this step again", stacklevel=3)
        elif new_shape:
            warnings.warn("input shapes changed; planning memory for the new shapes", stacklevel=3)
        need = self.plan is None or new_shape or left is not None
        # Under DDP every rank must enter planning together (plans are broadcast from rank 0).
        return self.reduce_boolean_decision(need, all=False), left is None

    def _planned_training_step(self, parent_step: Any, args: tuple, kwargs: dict) -> Any:
        try:
            with cache_off(self.lightning_module) as had_cache:
                if had_cache and not self._cache_warned:
                    self._cache_warned = True
                    warnings.warn(
                        "use_cache=True is turned off during planned training steps: a key/value cache changes "
                        "when checkpointed blocks recompute",
                        stacklevel=3,
                    )
                need, reuse = self._needs_plan(args, kwargs)
                if need:
                    self._make_plan(args, kwargs, reuse=reuse)
                assert self.watch is not None
                self.watch.start()
                return parent_step(*args, **kwargs)
        except torch.cuda.OutOfMemoryError as exc:
            raise self._oom(exc) from exc

    def _timed_optimizer_step(self, parent_step: Any, *args: Any, **kwargs: Any) -> Any:
        """The whole step (Lightning runs forward and backward in the optimizer's closure), timed
        in steady state; its figures are logged once per plan."""
        module = self.lightning_module
        if self.step_timer is None or self.plan is None or not module.automatic_optimization:
            return parent_step(*args, **kwargs)
        with self.step_timer.step():
            out = parent_step(*args, **kwargs)
        measured = self.step_timer.result()
        if measured is not None:
            self._log_steady_step(*measured)
        return out

    def _log_steady_step(self, seconds: float, peak: int | None) -> None:
        assert self.plan is not None
        self.measured_step_s = seconds
        trainer = self.lightning_module.trainer
        for logger in trainer.loggers:
            log_steady_step(logger, self.plan, seconds, peak, step=trainer.global_step)

    def _planned_backward(self, parent_backward: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return parent_backward(*args, **kwargs)
        except torch.cuda.OutOfMemoryError as exc:
            raise self._oom(exc) from exc

    def _teardown_planner(self) -> None:
        if self.planner is not None:
            self.planner.remove()
            self.planner = None
