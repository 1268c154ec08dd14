"""The callbacks in real Lightning training on core's heat-equation DataModule and surrogate."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from engage.core import ParameterSpace
from engage.core.data.simulated import SimulatedDataModule
from engage.core.models.heat_surrogate import HeatSurrogate
from engage.core.simulators import HeatEquation
from engage.sampling import ImageSimilaritySampler, LossDrivenSampler, SensitivityWeightedSampler
from engage.sampling.callbacks import ImageSimilaritySampling, LossDrivenSampling, SensitivityAnalysis


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(sampler_cls, callbacks, tmp_path, logger=False, epochs=2, **sampler_kwargs):
    torch.manual_seed(0)
    simulator = HeatEquation(grid=8, steps=3)
    sampler = sampler_cls(simulator.space, seed=0, **sampler_kwargs)
    datamodule = SimulatedDataModule(simulator, sampler, train_simulations=6, val_simulations=2, batch_size=6)
    model = HeatSurrogate(5, (8, 8), value_range=(100.0, 500.0), width=4)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer, sampler, model


def test_callbacks_steer_the_datamodule_sampler_and_are_checkpointed(tmp_path):
    loss_cb = LossDrivenSampling(every_n_steps=1, exploration=0.8, exploration_final=0.2)
    sens_cb = SensitivityAnalysis(
        base_samples=16, every_n_epochs=1, num_resamples=10, reweight_sampler=True, plot_dir=tmp_path / "p"
    )
    trainer, sampler, _ = fit(LossDrivenSampler, [loss_cb, sens_cb], tmp_path)
    points, losses = sampler.loss_table()
    assert len(points) == 6 and np.all(losses > 0) and loss_cb.told == sampler.num_told > 0
    # told keyed by the batches' simulation ids, never matched by the values of the points
    assert sorted(sampler.state_dict()["loss_averages"]["simulation_ids"]) == list(range(6))
    assert sampler.exploration < 0.8  # the schedule moved it
    assert not np.allclose(sampler.weights, 1.0)  # re-weighted from the total indices
    assert len(sens_cb.history) == 2 and sens_cb.result.ST_map.shape == (5, 8, 8)
    assert list((tmp_path / "p" / "sensitivity").glob("maps_*.png"))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    states = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    restored = SensitivityAnalysis()
    restored.load_state_dict(next(v for k, v in states.items() if k.startswith("SensitivityAnalysis")))
    assert restored.history == sens_cb.history
    assert next(v for k, v in states.items() if k.startswith("LossDrivenSampling"))["told"] == loss_cb.told


def test_sensitivity_logs_metrics_and_plots_to_mlflow(tmp_path):
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="sampling", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    callback = SensitivityAnalysis(
        every_n_epochs=1, every_n_steps=None, method="morris", trajectories=8, num_resamples=10
    )
    fit(SensitivityWeightedSampler, [callback], tmp_path, logger=logger, epochs=1)
    client = logger.experiment
    metrics = client.get_run(logger.run_id).data.metrics
    assert "sensitivity/mu_star/T_top" in metrics
    # the plots are images of their key at the step they were made, as MLflow shows them
    images = [a.path for a in client.list_artifacts(logger.run_id, "images")]
    assert any("sensitivity" in path and "step" in path and path.endswith(".png") for path in images), images


@pytest.mark.parametrize("source", ["predictions", "targets"])
def test_image_similarity_hands_a_landscape_to_the_sampler(tmp_path, source):
    callback = ImageSimilaritySampling(
        every_n_epochs=1, every_n_steps=None, source=source, probe_points=16, plot_dir=tmp_path
    )
    _, sampler, _ = fit(ImageSimilaritySampler, [callback], tmp_path, epochs=1)
    assert callback.landscape is not None and sampler.landscape is callback.landscape
    expected = 16 if source == "predictions" else 6
    assert len(callback.landscape.points) == expected
    assert np.all(callback.landscape.dissimilarity >= 0) and callback.history
    assert list(tmp_path.glob("similarity/landscape_*.png"))
    proposals = sampler.space.to_unit(sampler.ask(8))
    assert proposals.shape == (8, 5)


def test_image_similarity_landscape_resumes_from_a_checkpoint(tmp_path):
    callback = ImageSimilaritySampling(every_n_epochs=1, every_n_steps=None, probe_points=16, log_plots=False)
    trainer, sampler, _ = fit(ImageSimilaritySampler, [callback], tmp_path, epochs=1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    restored = ImageSimilaritySampler(sampler.space, seed=5)
    restored.load_state_dict(checkpoint[type(trainer.datamodule).__qualname__]["sampler"])
    # the landscape of the model's predictions (16 probe points), not one recomputed from the 6 targets
    assert len(restored.landscape.points) == 16
    np.testing.assert_array_equal(restored.landscape.dissimilarity, callback.landscape.dissimilarity)
    np.testing.assert_array_equal(restored.ask(8), sampler.ask(8))
    resumed = ImageSimilaritySampling()
    resumed.load_state_dict(next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ImageSimilarity")))
    np.testing.assert_array_equal(resumed.landscape.edges, callback.landscape.edges)
    assert resumed.history == callback.history


def test_loss_driven_reads_per_sample_loss_from_training_step_output():
    class Reporting(HeatSurrogate):
        def training_step(self, batch, batch_idx):
            per_sample = ((self(batch["parameters"], batch["time"]) - 0.5) ** 2).flatten(1).mean(1)
            return {"loss": per_sample.mean(), "per_sample_loss": per_sample.detach()}

    simulator = HeatEquation(grid=8, steps=2)
    sampler = LossDrivenSampler(simulator.space, seed=0)
    calls = []
    callback = LossDrivenSampling(sampler=sampler, per_sample_loss=lambda m, b: calls.append(1))
    datamodule = SimulatedDataModule(simulator, sampler, train_simulations=4, val_simulations=1, batch_size=4)
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    tells = []
    told = sampler.tell
    sampler.tell = lambda *a, **k: (tells.append(1), told(*a, **k))[1]
    trainer.fit(Reporting(5, (8, 8), width=4), datamodule=datamodule)
    assert not calls and callback.told == sampler.num_told > 0
    # read at every step, told to the sampler every every_n_steps (10) steps and once at the end
    assert 1 <= len(tells) <= trainer.global_step // 10 + 1 < trainer.global_step
    assert len(sampler.loss_table()[0]) == 4  # one entry per simulation


def test_loss_driven_keeps_the_losses_it_holds_in_its_checkpoint():
    space = ParameterSpace.from_config({"x": {"low": 0.0, "high": 1.0}})
    batches = [
        {"parameters": torch.tensor([[0.1], [0.1], [0.3]]), "simulation_id": torch.tensor([0, 0, 1])},
        {"parameters": torch.tensor([[0.6], [0.9]]), "simulation_id": torch.tensor([2, 3])},
    ]
    losses = [torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0.5, 1.5])]
    direct, resumed = LossDrivenSampler(space, seed=0), LossDrivenSampler(space, seed=0)
    callback = LossDrivenSampling()
    for batch, loss in zip(batches, losses):
        callback.tell(direct, batch, loss)
    holding = LossDrivenSampling()
    for batch, loss in zip(batches, losses):
        holding._hold(batch, loss)
    restored = LossDrivenSampling()
    restored.load_state_dict(holding.state_dict())  # as a checkpoint between two tells keeps them
    assert restored._tell_held(resumed) == 4 == callback.told
    np.testing.assert_allclose(resumed.loss_table()[1], direct.loss_table()[1])
    np.testing.assert_allclose(resumed.loss_table()[1], [1.0, 1.0, 0.5, 1.5])


def test_sensitivity_without_parameters_says_what_to_pass():
    with pytest.raises(ValueError, match="pass space="):
        SensitivityAnalysis().analyze(torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="power of 2"):
        SensitivityAnalysis(base_samples=100)


def test_image_similarity_keeps_each_simulations_latest_step():
    callback = ImageSimilaritySampling(num_parameters=1, probe_points=4, source="targets")
    ids = torch.tensor([0, 0, 1, 1, 0, 2])
    times = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.4])
    batch = {
        "parameters": ids[:, None].float() / 10,
        "time": times[:, None],
        "target": times[:, None, None].expand(6, 3, 3).clone(),
        "simulation_id": ids,
    }
    callback._collect(batch)
    callback._collect({k: v[:1] for k, v in batch.items()})  # an older step of simulation 0 changes nothing
    assert {k: round(v[0], 3) for k, v in callback._seen.items()} == {0: 0.5, 1: 0.9, 2: 0.4}
    assert float(callback._seen[1][2][0, 0]) == pytest.approx(0.9)  # the image of that step


@pytest.mark.parametrize("shape", [(16, 16), (5, 9), (3, 40), (48, 48)])
def test_pairwise_ssim_equals_one_call_per_pair(shape):
    from engage.sampling.similarity import dissimilarity, neighbour_edges, pairwise_dissimilarity

    rng = np.random.default_rng(0)
    images = rng.random((30, *shape)).cumsum(axis=1)
    edges = neighbour_edges(rng.random((30, 3)), 3)
    data_range = float(images.max() - images.min())
    one_by_one = [dissimilarity(images[i], images[j], "ssim", data_range) for i, j in edges]
    np.testing.assert_allclose(pairwise_dissimilarity(images, edges, "ssim", data_range), one_by_one, atol=1e-12)


def test_loss_driven_tells_losses_relative_to_their_batch():
    space = ParameterSpace.from_config({"x": {"low": 0.0, "high": 1.0}})
    early, late = torch.tensor([4.0, 12.0]), torch.tensor([0.5, 0.1])  # the network learnt in between
    batches = [
        {"parameters": torch.tensor([[0.1], [0.3]]), "simulation_id": torch.tensor([0, 1])},
        {"parameters": torch.tensor([[0.6], [0.9]]), "simulation_id": torch.tensor([2, 3])},
    ]
    relative, raw = LossDrivenSampler(space, seed=0), LossDrivenSampler(space, seed=0)
    for sampler, callback in ((relative, LossDrivenSampling()), (raw, LossDrivenSampling(relative=False))):
        for batch, losses in zip(batches, (early, late)):
            callback.tell(sampler, batch, losses)
    # raw: the early simulations outrank the late hard one (0.5 of a batch averaging 0.3)
    assert np.allclose(raw.loss_table()[1], [4.0, 12.0, 0.5, 0.1])
    assert np.allclose(relative.loss_table()[1], [0.5, 1.5, 5 / 3, 1 / 3])
    assert LossDrivenSampling().tell(relative, batches[0], torch.zeros(2)) == 0  # a perfect batch ranks nothing


def test_image_similarity_refuses_ssim_on_outputs_too_small_before_training():
    from types import SimpleNamespace

    from engage.core.simulators.burgers import ViscousBurgers

    class Rows(torch.nn.Module):  # a surrogate of the simulator's rows or images
        def __init__(self, shape):
            super().__init__()
            self.shape, self.w = shape, torch.nn.Parameter(torch.zeros(()))

        def forward(self, p):
            return p.new_zeros(len(p), *self.shape) + self.w

    trainer = SimpleNamespace(datamodule=SimpleNamespace(simulator=ViscousBurgers(grid=16, steps=2)))
    with pytest.raises(ValueError, match=r"callbacks.image_similarity.metric: ssim .* \(1, 16\); use metric=nrmse"):
        ImageSimilaritySampling().on_fit_start(trainer, Rows((1, 16)))
    ImageSimilaritySampling(metric="nrmse").on_fit_start(trainer, Rows((1, 16)))  # a plain norm compares rows
    trainer.datamodule.simulator = HeatEquation(grid=8, steps=2)
    ImageSimilaritySampling().on_fit_start(trainer, Rows((8, 8)))


def test_callbacks_refuse_periods_and_figures_that_would_never_run_or_fail_later():
    from engage.sampling.samplers.breed import BreedSampler

    space = HeatEquation(grid=8, steps=2).space
    for build, expected in (
        (lambda: SensitivityAnalysis(names=["a", "b"], every_n_steps=0), "every_n_steps must be a whole number >= 1"),
        (lambda: SensitivityAnalysis(names=["a", "b"], conf_level=2), "conf_level must be between 0 and 1"),
        (lambda: SensitivityAnalysis(names=["a", "b"], batch_size=0), "batch_size must be a whole number >= 1"),
        (lambda: SensitivityAnalysis(names="ab"), "names must be a list of names, got the string 'ab'"),
        (lambda: SensitivityAnalysis(names=["a"], base_samples="64"), "base_samples must be a whole number >= 2"),
        (lambda: SensitivityAnalysis(names=["a"], base_samples=64.0), "base_samples must be a whole number >= 2"),
        (lambda: SensitivityAnalysis(space=3), "space must be a ParameterSpace or a mapping"),
        (lambda: ImageSimilaritySampling(plot_parameters=(0,)), "plot_parameters must be two parameter indices"),
        (lambda: LossDrivenSampling(every_n_steps=None), "every_n_steps must be a whole number >= 1, got None"),
        (lambda: LossDrivenSampling(every_n_steps=2.7), "every_n_steps must be a whole number >= 1, got 2.7"),
        (lambda: LossDrivenSampling(sampler="loss_driven"), "sampler must be a sampler object .*got 'loss_driven'"),
        (lambda: ImageSimilaritySampling(every_n_epochs=0), "every_n_epochs must be a whole number >= 1"),
        (lambda: ImageSimilaritySampling(data_range=-1), "data_range must be > 0"),
        (lambda: BreedSampler(space, spread=float("inf")), "spread must be finite and > 0"),
        (lambda: LossDrivenSampler(space, sigma=float("inf")), "sigma must be finite and > 0"),
        (lambda: LossDrivenSampler(space, top_k=2.7), "top_k must be a whole number >= 1, got 2.7"),
        (lambda: ImageSimilaritySampler(space, data_range=-1), "data_range must be > 0"),
        (lambda: ImageSimilaritySampler(space, top_k=0), "top_k must be a whole number >= 1, got 0"),
        (lambda: LossDrivenSampling(exploration_final=0.1), "exploration_final needs exploration"),
    ):
        with pytest.raises(ValueError, match=expected):
            build()
    from engage.sampling import SALibSobolSampler

    for base_samples in (8.5, "8"):
        with pytest.raises(ValueError, match="base_samples must be a whole number >= 2"):
            SALibSobolSampler(space, base_samples=base_samples)
    # a space as a config declares it
    assert SensitivityAnalysis(space={"x": {"low": 0, "high": 1}}).space.names == ["x"]
    # inputs="values" takes the space from the trainer's DataModule when none is given
    assert SensitivityAnalysis(inputs="values").inputs == "values"
    # names that are not the space's are refused, not silently replaced
    with pytest.raises(ValueError, match=r"names=\['x1', 'x2'\] differ from the parameter space's"):
        SensitivityAnalysis(names=["x1", "x2"], space=space).analyze(torch.nn.Linear(5, 1))


def test_loss_driven_schedule_ends_at_its_final_value_and_held_out_losses_keep_their_own_ids():
    from types import SimpleNamespace

    callback = LossDrivenSampling(exploration=0.5, exploration_final=0.1, schedule="linear")
    trainer = SimpleNamespace(estimated_stepping_batches=40, global_step=40, max_epochs=2, current_epoch=1)
    assert callback._progress(trainer) == 1.0  # the last step: exploration_final
    trainer.global_step = 20
    assert callback._progress(trainer) == 0.5
    # validation simulations are numbered from 0 like the training ones: told at their points only
    space = HeatEquation(grid=8, steps=2).space
    sampler = LossDrivenSampler(space, seed=0)
    told = []
    sampler.tell = lambda points, losses, simulation_ids=None: told.append(simulation_ids)
    batch = {"parameters": torch.rand(4, 5), "simulation_id": torch.tensor([0, 0, 1, 1])}
    LossDrivenSampling(sampler=sampler, stage="val").tell(sampler, batch, torch.rand(4))
    LossDrivenSampling(sampler=sampler, stage="train").tell(sampler, batch, torch.rand(4))
    assert told[0] is None and list(told[1]) == [0, 1]


def test_a_run_shorter_than_the_analysis_period_analyses_the_trained_model_and_a_missing_output_key_is_said(
    tmp_path,
):
    sensitivity = SensitivityAnalysis(base_samples=8, every_n_steps=1000, log_plots=False)
    losses = LossDrivenSampling(every_n_steps=1, output_key="per_sample_relativ_loss")
    with pytest.warns(UserWarning, match=r"has no 'per_sample_relativ_loss' \(it has loss"):
        trainer, _, _ = fit(LossDrivenSampler, [sensitivity, losses], tmp_path, epochs=1)
    assert [h["step"] for h in sensitivity.history] == [trainer.global_step]


class _Plain(pl.LightningModule):
    """A user's own module and loader: parameter tensors in, a value out, no ENGAGE DataModule."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.steps = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch
        return torch.nn.functional.mse_loss(self(x).squeeze(1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _plain_fit(callbacks, tmp_path, max_steps=4, model=None):
    x = torch.rand(32, 3)
    loader = torch.utils.data.DataLoader(list(zip(x, x @ torch.tensor([3.0, 1.0, 0.0]), strict=True)), batch_size=8)
    model = model or _Plain()
    trainer = pl.Trainer(max_steps=max_steps, callbacks=callbacks, logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(model, loader)
    return trainer, model


@pytest.mark.parametrize(
    ("callback", "expected"),
    [
        (lambda: SensitivityAnalysis(every_n_steps=2), "SensitivityAnalysis cannot tell the model's parameters"),
        (lambda: ImageSimilaritySampling(every_n_steps=2), "ImageSimilaritySampling cannot tell the number"),
        (
            lambda: ImageSimilaritySampling(num_parameters=3, plot_parameters=(0, 5)),
            r"plot_parameters=\(0, 5\) names a parameter beyond the 3 there are",
        ),
        (lambda: LossDrivenSampling(), "LossDrivenSampling found no sampler to tell the losses to"),
        (
            lambda: SensitivityAnalysis(names=["a", "b", "c"], every_n_steps=2, reweight_sampler=True),
            r"SensitivityAnalysis\(reweight_sampler=True\) found no sampler to re-weight",
        ),
    ],
)
def test_in_plain_lightning_what_would_fail_at_the_first_analysis_fails_before_training(callback, expected, tmp_path):
    model = _Plain()
    with pytest.raises(ValueError, match=expected):
        _plain_fit([callback()], tmp_path, model=model)
    assert model.steps == 0  # refused before the first step


def test_loss_driven_sampling_on_batches_without_parameters_stops_training_saying_what_it_needs(tmp_path):
    sampler = LossDrivenSampler(ParameterSpace.from_config({n: {"low": 0, "high": 1} for n in "abc"}))
    model = _Plain()
    with pytest.raises(TypeError, match=r"got list: have your collate_fn return \{'parameters': space.to_unit"):
        _plain_fit([LossDrivenSampling(sampler=sampler, every_n_steps=1)], tmp_path, model=model)
    assert model.steps == 1 and sampler.num_told == 0  # not a run of steps that told nothing


def test_image_similarity_draws_the_trained_models_landscape_when_training_ends_and_refuses_what_it_cannot_read(
    tmp_path,
):
    def images(model, x):  # the model's value as a 4x4 image
        return model(x)[:, :, None].expand(-1, 4, 4)

    predictions = ImageSimilaritySampling(num_parameters=3, probe_points=8, metric="nrmse", log_plots=False,
                                          predict=images)  # fmt: skip
    trainer, _ = _plain_fit([predictions], tmp_path)
    assert [h["step"] for h in predictions.history] == [trainer.global_step] == [4]  # every_n_steps=200 not reached
    # a landscape of targets from (x, y) batches: refused at the first batch, not a landscape of nothing
    targets = ImageSimilaritySampling(source="targets", metric="nrmse", log_plots=False)
    with pytest.raises(TypeError, match=r"source='targets'\) needs batches that are mappings .* got list"):
        _plain_fit([targets], tmp_path / "targets")
    # a model that returns one number per point, or that cannot take the space's points: before training
    model = _Plain()
    numbers = ImageSimilaritySampling(num_parameters=3, metric="nrmse", log_plots=False)
    with pytest.raises(ValueError, match=r"gives one number per point, not an image to compare; give predict="):
        _plain_fit([numbers], tmp_path / "numbers", model=model)
    assert model.steps == 0
    wider = SensitivityAnalysis(names=["a", "b"], every_n_steps=2, log_plots=False)
    with pytest.raises(
        ValueError, match=r"^SensitivityAnalysis could not evaluate the model on points of the 2 .*mat1"
    ):
        _plain_fit([wider], tmp_path / "wider", model=model)
    assert model.steps == 0


def test_two_analyses_of_one_kind_train_side_by_side_and_each_resumes_its_own_history(tmp_path):
    def analyses():
        return [
            SensitivityAnalysis(names=["a", "b", "c"], base_samples=16, every_n_steps=2, log_plots=False),
            SensitivityAnalysis(names=["a", "b", "c"], method="morris", trajectories=4, every_n_steps=2,
                                log_plots=False),
        ]  # fmt: skip

    sobol, morris = first = analyses()
    trainer, _ = _plain_fit(first, tmp_path)
    assert [h["step"] for h in sobol.history] == [h["step"] for h in morris.history] == [2, 4]
    assert "sensitivity/ST/a" in sobol.history[0] and "sensitivity/mu_star/a" in morris.history[0]
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    again = analyses()
    x = torch.rand(8, 3)
    resumed = pl.Trainer(max_steps=4, callbacks=again, logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    resumed.fit(_Plain(), torch.utils.data.DataLoader(list(zip(x, x.sum(1), strict=True)), batch_size=8),
                ckpt_path=path)  # fmt: skip
    assert again[0].history == sobol.history and again[1].history == morris.history


def test_an_analysis_resumes_its_history_from_a_checkpoint_that_named_it_by_its_class(tmp_path):
    """Checkpoints written before each analysis had a key of its own hold it as 'SensitivityAnalysis'."""
    made = SensitivityAnalysis(names=["a", "b", "c"], base_samples=16, every_n_steps=2, log_plots=False)
    trainer, _ = _plain_fit([made], tmp_path)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["callbacks"] = {"SensitivityAnalysis": checkpoint["callbacks"].pop(made.state_key)}
    torch.save(checkpoint, path)
    again = SensitivityAnalysis(names=["a", "b", "c"], base_samples=16, every_n_steps=2, log_plots=False)
    x = torch.rand(8, 3)
    resumed = pl.Trainer(max_steps=4, callbacks=[again], logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    resumed.fit(_Plain(), torch.utils.data.DataLoader(list(zip(x, x.sum(1), strict=True)), batch_size=8),
                ckpt_path=path)  # fmt: skip
    assert again.history == made.history and len(made.history) == 2


class _MappedPlain(pl.LightningModule):
    """A user's own module whose loader gives mappings of unit parameters and targets."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def forward(self, parameters):
        return self.net(parameters).squeeze(1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self(batch["parameters"]), batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _mapped_fit(callbacks, tmp_path, max_steps, ckpt_path=None, checkpoint=None):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=g)
    rows = [{"parameters": p, "target": p @ torch.tensor([3.0, -1.0])} for p in x]
    loader = torch.utils.data.DataLoader(rows, batch_size=8)
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[*callbacks, *([checkpoint] if checkpoint else [])],
                         logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(_MappedPlain(), loader, ckpt_path=ckpt_path)
    return trainer


def test_in_plain_lightning_the_sampler_a_callback_was_given_resumes_from_the_checkpoint_and_short_runs_tell_it(
    tmp_path,
):
    """A sampler given to the callbacks (no DataModule holds it) is kept in the checkpoint and
    proposes after a resume what it would have proposed; a run shorter than ``every_n_steps``
    (or fast_dev_run) tells it the last batch's losses when training ends."""
    import copy

    space = ParameterSpace.from_config({"a": {"low": 0.0, "high": 1.0}, "b": {"low": 0.0, "high": 1.0}})
    sampler = LossDrivenSampler(space, seed=0, significance=None)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    callbacks = [LossDrivenSampling(sampler=sampler, every_n_steps=1), SensitivityAnalysis(space=space, every_n_steps=2,
                 base_samples=8, num_resamples=5, log_plots=False)]  # fmt: skip
    _mapped_fit(callbacks, tmp_path, max_steps=3, checkpoint=checkpoint)
    assert sampler.num_told > 0
    expected = copy.deepcopy(sampler)
    fresh = LossDrivenSampler(space, seed=0, significance=None)
    _mapped_fit([LossDrivenSampling(sampler=fresh, every_n_steps=1)], tmp_path, max_steps=3,
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # fmt: skip
    assert fresh.num_told == expected.num_told
    np.testing.assert_array_equal(fresh.loss_table()[1], expected.loss_table()[1])
    np.testing.assert_array_equal(fresh.ask(3), expected.ask(3))

    short = LossDrivenSampler(space, seed=0, significance=None)
    _mapped_fit([LossDrivenSampling(sampler=short)], tmp_path / "short", max_steps=3)  # every_n_steps=10
    assert short.num_told == 8  # the last batch's eight points, told as training ended


_DDP_APP = """
import json, sys
import lightning.pytorch as pl, numpy as np, torch
from engage.core import ParameterSpace
from engage.sampling import LossDrivenSampler
from engage.sampling.callbacks import LossDrivenSampling

class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
    def forward(self, p):
        return self.net(p).squeeze(1)
    def training_step(self, batch, i):
        return torch.nn.functional.mse_loss(self(batch["parameters"]), batch["target"])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

if __name__ == "__main__":
    space = ParameterSpace.from_config({"a": {"low": 0.0, "high": 1.0}, "b": {"low": 0.0, "high": 1.0}})
    sampler = LossDrivenSampler(space, seed=0, significance=None)
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(0))
    rows = [{"parameters": p, "target": p @ torch.tensor([3.0, -1.0])} for p in x]
    trainer = pl.Trainer(max_steps=3, strategy="ddp", devices=2, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[LossDrivenSampling(sampler=sampler, every_n_steps=2)])
    trainer.fit(Model(), torch.utils.data.DataLoader(rows, batch_size=8))
    with open(sys.argv[1] + f".{trainer.global_rank}", "w") as out:
        json.dump({"told": sampler.num_told, "next": sampler.ask(3).tolist()}, out)
"""


@pytest.mark.slow
def test_under_ddp_a_sampler_given_to_the_callback_is_told_every_ranks_losses_and_proposes_alike(tmp_path):
    """Each rank holds a copy of the sampler; each tell takes both ranks' losses (at step 2, and the
    last batch's when training ends), so both copies propose the same next points."""
    import json
    import subprocess
    import sys

    app = tmp_path / "app.py"
    app.write_text(_DDP_APP)
    result = subprocess.run([sys.executable, str(app), str(tmp_path / "out")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    assert ranks[0]["told"] == ranks[1]["told"] == 2 * 2 * 8  # two tells of both ranks' 8-sample batches
    assert ranks[0]["next"] == ranks[1]["next"]
