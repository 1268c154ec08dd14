"""The DDP Lightning strategy that plans memory once on rank 0 and broadcasts the plan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.strategies import DDPStrategy

from engage.memory._planning import _MemoryPlanning, check_strategy_kwargs
from engage.memory.errors import UnsupportedSetupError
from engage.memory.plan import Plan
from engage.memory.profile import Profile


class DDPMemoryPlanningStrategy(_MemoryPlanning, DDPStrategy):
    """:class:`~engage.memory.MemoryPlanningStrategy` under data parallelism.

    Rank 0 profiles and solves on its first batch; every rank then applies the same plan, so the
    recomputation and gradient buckets match across ranks. Arguments as for the single-device strategy,
    plus those of ``DDPStrategy``.

    Examples:
        >>> strategy = DDPMemoryPlanningStrategy(budget="20GiB", process_group_backend="gloo")
    """

    strategy_name = "ddp_memory_planning"

    def __init__(
        self,
        budget: str | int | float,
        solver: str = "auto",
        blocks: Sequence[str] | None = None,
        decisions: Sequence[str] = ("keep", "selective", "recompute"),
        profile_path: str | None = None,
        verify: bool = True,
        print_plan: bool = True,
        chunked_loss: bool = False,
        loss_chunks: int = 8,
        **kwargs: Any,
    ) -> None:
        check_strategy_kwargs(type(self).__name__, DDPStrategy, kwargs)
        super().__init__(**kwargs)
        self._init_planning(
            budget,
            solver,
            blocks,
            decisions,
            profile_path,
            verify,
            print_plan,
            chunked_loss=chunked_loss,
            loss_chunks=loss_chunks,
        )

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        self._setup_planner()

    def _share(self, plan: Plan | None, profile: Profile | None, inputs: str) -> tuple[Plan, Profile | None]:
        payload = (plan.to_dict(), profile.to_dict(), inputs) if plan is not None and profile is not None else None
        plan_data, profile_data, planned_inputs = self.broadcast(payload, src=0)
        if inputs != planned_inputs:
            raise UnsupportedSetupError(
                f"rank {self.global_rank} got input {inputs} but rank 0 planned for {planned_inputs}: every rank "
                "must use one plan; give all ranks batches of the same shapes (drop_last=True, padding)"
            )
        return Plan.from_dict(plan_data), Profile.from_dict(profile_data)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._planned_training_step(super().training_step, args, kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        return self._planned_backward(super().backward, *args, **kwargs)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed_optimizer_step(super().optimizer_step, *args, **kwargs)

    def teardown(self) -> None:
        self._teardown_planner()
        super().teardown()
