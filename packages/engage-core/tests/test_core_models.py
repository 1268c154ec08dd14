"""The default surrogate's per-sample outputs, which loss-aware sampling is told."""

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
