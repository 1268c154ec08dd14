"""The default surrogate's per-sample outputs, which loss-aware sampling is told."""

import numpy as np
import torch

from engage.core.models import HeatSurrogate
from engage.core.online.report import PER_SAMPLE_LOSS, PER_SAMPLE_RELATIVE_LOSS


def test_a_training_step_returns_each_samples_loss_and_squared_relative_error_in_the_simulators_units():
    torch.manual_seed(0)
    model = HeatSurrogate(3, (4, 4), value_range=(-2.0, 6.0), width=4)
    batch = {"parameters": torch.rand(5, 3), "time": torch.rand(5, 1), "target": 4.0 * torch.rand(5, 4, 4) - 1.0}
    out = model.training_step(batch, 0)
    with torch.no_grad():
        predicted = model.predict_field(batch["parameters"], batch["time"])  # in the simulator's units
    error = (predicted - batch["target"]).flatten(1)
    expected = error.square().sum(1) / batch["target"].flatten(1).square().sum(1)
    torch.testing.assert_close(out[PER_SAMPLE_RELATIVE_LOSS], expected)
    # the loss is in the model's scaled units: the same errors over the squared scale (8 here)
    torch.testing.assert_close(out[PER_SAMPLE_LOSS], error.square().mean(1) / 64.0)
    assert not out[PER_SAMPLE_RELATIVE_LOSS].requires_grad and out["loss"].requires_grad


def test_the_sampled_points_plots_mark_the_held_out_simulations():
    from engage.core.online.report import sampled_points_figures
    from engage.core.space import ParameterSpace

    space = ParameterSpace.from_config({"a": {"low": 0, "high": 1, "unit": "K"}, "b": {"low": 0, "high": 2}})
    table = {"simulation_id": [0, 1, 2], "a": [0.1, 0.5, 0.9], "b": [1.0, 0.2, 1.5], "mean_train_loss": [1, 2, None]}
    held_out = np.array([[0.2, 0.3], [0.7, 1.9]])
    figures = sampled_points_figures(table, space, held_out)
    assert set(figures) == {"order", "loss"}
    for figure in figures.values():
        ax = figure.axes[0]
        crosses = ax.collections[1].get_offsets()
        assert np.allclose(crosses, held_out)  # (a, b) of each held-out simulation, in the space's units
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sampled", "held-out (2)"]
        assert "3 simulations, 2 held-out" in figure.get_suptitle()
    assert len(sampled_points_figures(table, space)["order"].axes[0].collections) == 1  # none: none marked
