"""The plugin layer as pluggy keeps it: every hook documented and implemented in the product,
plugins loaded by pluggy's own loader with ``check_pending()``, failures named in one line."""

from __future__ import annotations

import inspect
import re
import sys
import textwrap

import pytest

from engage.core import hookspecs
from engage.core.config.validate import ConfigError
from engage.core.online.timeline import SimulationTimeline
from engage.core.plugins import DISABLE_ENV, PluginError, load_plugins, new_plugin_manager, plugin_infos


def test_every_hook_documents_each_parameter_and_when_it_is_called():
    for name in hookspecs.hook_names():
        spec = getattr(hookspecs, name)
        doc = inspect.getdoc(spec) or ""
        assert "Called" in doc, f"{name} does not say when it is called"
        for parameter in inspect.signature(spec).parameters:
            assert f"``{parameter}" in doc, f"{name} does not document {parameter!r}"


def test_every_hook_has_an_implementation_in_the_product():
    manager = new_plugin_manager()
    assert {"core", "sampling", "memory", "deploy"} <= {info.name for info in plugin_infos(manager)}
    implemented = {name for name in hookspecs.hook_names() if getattr(manager.hook, name).get_hookimpls()}
    # the simulation timeline is a plugin object engage run registers for each MLflow run
    manager.register(SimulationTimeline(None, "run"), name="timeline")
    observed = {name for name in hookspecs.hook_names() if getattr(manager.hook, name).get_hookimpls()}
    assert observed == set(hookspecs.hook_names()), sorted(set(hookspecs.hook_names()) - observed)
    assert {
        "engage_callbacks",
        "engage_strategy",
        "engage_providers",
        "engage_placement_solvers",
        "engage_run_started",
    } <= implemented


#: a plugin offering core's simulator=heat again
CLASH = """
from dataclasses import dataclass
from engage.core import hookimpl
from engage.core.config.options import ConfigOption

@dataclass
class Heat:
    _target_: str = "engage.core.simulators.heat.HeatEquation"

@hookimpl
def engage_config_options():
    return [ConfigOption("simulator", "heat", Heat())]
"""


def _install(tmp_path, monkeypatch, name: str, module_source: str | None) -> None:
    """A distribution with one ``engage`` entry point, found by importlib.metadata on sys.path."""
    info = tmp_path / f"{name}_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[engage]\n{name} = {name}_module\n")
    if module_source is not None:
        (tmp_path / f"{name}_module.py").write_text(textwrap.dedent(module_source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, f"{name}_module", raising=False)


def test_a_plugin_that_fails_to_import_is_named_and_can_be_disabled(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, "broken", "raise ImportError('no module named tensorflowish')\n")
    with pytest.raises(PluginError) as failure:
        load_plugins(new_plugin_manager(installed=False))
    message = str(failure.value)
    assert "plugin 'broken' (broken_module) failed to load: ImportError: no module named tensorflowish" in message
    assert f"{DISABLE_ENV}=broken" in message and "\n" not in message
    monkeypatch.setenv(DISABLE_ENV, "broken")
    manager = load_plugins(new_plugin_manager(installed=False))
    assert manager.is_blocked("broken") and "broken" not in {info.name for info in plugin_infos(manager)}
    monkeypatch.setenv(DISABLE_ENV, "brokn")  # a misspelling would leave the broken plugin loaded
    with pytest.raises(PluginError) as misspelt:
        load_plugins(new_plugin_manager(installed=False))
    assert str(misspelt.value).startswith(
        f"{DISABLE_ENV} names 'brokn', which no installed package declares; did you mean 'broken'? "
        "the installed ENGAGE plugins are broken, core,"
    )
    # a plugin this environment lacks (a setting shared with others), close to no installed name
    monkeypatch.setenv(DISABLE_ENV, "broken,tensorflowish")
    assert load_plugins(new_plugin_manager(installed=False)).is_blocked("broken")


def test_a_misspelled_hook_implementation_fails_loudly(tmp_path, monkeypatch):
    _install(
        tmp_path,
        monkeypatch,
        "typo",
        """
        from engage.core import hookimpl

        @hookimpl
        def engage_simulaton_finished(record):
            pass
        """,
    )
    with pytest.raises(PluginError, match=r"plugin 'typo' has a hook implementation that is no ENGAGE hook") as error:
        load_plugins(new_plugin_manager(installed=False))
    assert "did you mean engage_simulation_finished?" in str(error.value)


def test_a_hook_implementation_with_an_argument_the_hook_does_not_give_names_the_fix(tmp_path, monkeypatch):
    _install(
        tmp_path,
        monkeypatch,
        "args",
        """
        from engage.core import hookimpl

        @hookimpl
        def engage_simulation_failed(record, err):
            pass
        """,
    )
    with pytest.raises(PluginError) as error:
        load_plugins(new_plugin_manager(installed=False))
    line = str(error.value)
    assert "plugin 'args' (args_module): engage_simulation_failed(record, err) takes {'err'}" in line, line
    assert "its arguments are among (record, error): rename them" in line and "\n" not in line, line


def test_engage_plugins_reports_what_each_plugin_adds_from_pluggy_records(capsys, monkeypatch):
    from engage.core.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}

    def contributions(plugin: str) -> str:
        start = out.index(f"│ {plugin} ")
        return out[start : out.find("├", start) if "├" in out[start:] else None]

    assert "engage-deploy" in rows["deploy"]
    deploy = contributions("deploy")
    for expected in (
        "infrastructure: chameleon, g5k, local",
        "providers: chameleon, g5k, local, netns, slurm, static, vagrant",
        "placement solvers: cpsat, exhaustive, greedy",
        "Hydra plugins: hydra_plugins.engage_launcher.engage_launcher",
    ):
        assert expected in deploy
    assert "strategy: memory, memory_ddp" in contributions("memory")
    assert "callbacks: image_similarity, loss_driven, sensitivity" in contributions("sampling")


def test_a_package_that_declares_a_plugin_name_already_taken_is_refused(tmp_path, monkeypatch):
    """pluggy loads the first of two entry points of one name and skips the other: another
    package's ``sampling`` would silently replace engage-sampling."""
    _install(tmp_path, monkeypatch, "sampling", "")
    with pytest.raises(PluginError) as failure:
        load_plugins(new_plugin_manager(installed=False))
    message = str(failure.value)
    assert "'sampling-plugin'" in message and "'engage-sampling'" in message, message
    assert "both declare the ENGAGE plugin 'sampling'" in message and "\n" not in message


def test_two_plugins_offering_one_option_are_named_instead_of_one_winning(tmp_path, monkeypatch):
    from engage.core.config.store import config_options

    _install(tmp_path, monkeypatch, "clash", CLASH)
    with pytest.raises(PluginError, match=r"plugins '\w+' and 'clash' both offer simulator=heat; rename one"):
        config_options(load_plugins(new_plugin_manager(installed=False)))


def test_a_group_a_plugin_adds_is_chosen_like_engages_own(tmp_path, monkeypatch):
    """``report=html`` as ``sampler=lhs``: empty until chosen, its keys checked once it is."""
    import os
    import subprocess

    _install(tmp_path, monkeypatch, "reports", """
        from dataclasses import dataclass
        from engage.core import hookimpl
        from engage.core.config.options import ConfigOption

        @dataclass
        class Report:
            every: int = 5

        @hookimpl
        def engage_config_options():
            return [ConfigOption("report", "html", Report, "an HTML report")]
        """)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def engage_run(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engage.core.cli", "run", *overrides, "--cfg", "job"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    chosen = engage_run("report=html", "report.every=3")
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    assert "report:\n  every: 3\n" in chosen.stdout
    assert "report: null\n" in engage_run().stdout
    typo = engage_run("report=html", "report.evry=3")
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines()[-1] == (
        "engage run: report.evry: unknown key; did you mean report.every? allowed: every"
    )


def test_an_option_whose_default_has_the_wrong_type_names_its_plugin():
    """OmegaConf refuses such a node when it is stored, which every `engage run` does first."""
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore

    from engage.core.config.options import ConfigOption
    from engage.core.config.store import store_option

    @dataclass
    class Steps:
        steps: int = "many"  # type: ignore[assignment]

    with pytest.raises(PluginError) as failure:
        store_option(ConfigStore.instance(), "typed", ConfigOption("test_typed", "steps", Steps))
    assert str(failure.value) == (
        "plugin 'typed': option test_typed=steps is no valid config: field steps: Value 'many' of type 'str' "
        f"could not be converted to Integer; fix its default, or set {DISABLE_ENV}=typed"
    )


def test_an_observer_of_the_run_end_that_raises_fails_the_run_naming_it(tmp_path, monkeypatch):
    """Its record would say FINISHED, though the run did not end as it should."""
    import os
    import subprocess

    from mlflow.tracking import MlflowClient

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    _install(plugin, monkeypatch, "observer", """
        from engage.core import hookimpl

        @hookimpl
        def engage_run_finished(record):
            raise RuntimeError("the report server is down")
        """)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{plugin}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    tiny = ["simulator.grid=8", "simulator.steps=10", "data.simulations=2", "data.val_simulations=1",
            "trainer.max_epochs=1", "model.width=4"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "engage.core.cli", "run", *tiny], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 4, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "plugin 'observer' failed in engage_run_finished: RuntimeError: the report server is down" in last, last
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    assert run.info.status == "FAILED"
    assert "plugin 'observer' failed in engage_run_finished" in run.data.tags["engage.error"]  # why, on the run


def test_registry_clashes_and_failing_hooks_name_their_plugins():
    from engage.core import hookimpl
    from engage.core.plugins import PluginHookError, call_each, samplers

    class One:
        @staticmethod
        @hookimpl
        def engage_samplers():
            return {"grid": int}

    class Two:
        @staticmethod
        @hookimpl
        def engage_samplers():
            return {"grid": float}

    manager = new_plugin_manager([("one", One), ("two", Two)], installed=False)
    with pytest.raises(PluginError, match=r"plugins '(one|two)' and '(one|two)' both register the sampler 'grid'"):
        samplers(manager)

    class Broken:
        @staticmethod
        @hookimpl
        def engage_callbacks(cfg):
            raise KeyError("logger")

    manager = new_plugin_manager([("broken", Broken)], installed=False)
    with pytest.raises(PluginHookError, match=r"plugin 'broken' failed in engage_callbacks: KeyError: 'logger'"):
        call_each(manager, manager.hook.engage_callbacks, cfg=None)

    class Refusing:  # a config the plugin's callbacks cannot run with is the user's to fix
        @staticmethod
        @hookimpl
        def engage_callbacks(cfg):
            raise ConfigError("callbacks.mine.every: must be >= 1, got 0")

    manager = new_plugin_manager([("refusing", Refusing)], installed=False)
    with pytest.raises(ConfigError, match=r"^callbacks.mine.every: must be >= 1, got 0$"):
        call_each(manager, manager.hook.engage_callbacks, cfg=None)

    class Answering:  # a firstresult hook: the first answer ends the call, as in pluggy
        @staticmethod
        @hookimpl
        def engage_strategy(cfg):
            return "ddp"

    class NotAsked:
        @staticmethod
        @hookimpl
        def engage_strategy(cfg):
            raise AssertionError("asked after an answer")

    # pluggy calls the last registered first
    manager = new_plugin_manager([("not-asked", NotAsked), ("answering", Answering)], installed=False)
    assert call_each(manager, manager.hook.engage_strategy, cfg=None) == ["ddp"]


def test_a_plugin_that_breaks_the_command_line_is_one_line_and_exit_code_2(tmp_path, monkeypatch):
    """Two plugins offering one option, a plugin whose ``engage_commands`` raises, two registering
    one sampler: every ``engage`` command says so in one line naming them, exit code 2, before
    anything is created."""
    import os
    import subprocess

    sources = {
        "clash": CLASH,
        "nocommand": """
            from engage.core import hookimpl

            @hookimpl
            def engage_commands():
                raise KeyError("deliberate")
            """,
        "twin": """
            from engage.core import hookimpl

            @hookimpl
            def engage_samplers():
                return {"uniform": int}
            """,
        "shadow": """
            from engage.core import hookimpl

            @hookimpl
            def engage_config_searchpath():
                return ["pkg://shadow_conf"]
            """,
    }
    expected = {
        "clash": r"plugins '\w+' and 'clash' both offer simulator=heat; rename one option, or set "
        r"ENGAGE_DISABLE_PLUGINS",
        "nocommand": r"plugin 'nocommand' failed in engage_commands: KeyError: 'deliberate'; fix it, or set "
        r"ENGAGE_DISABLE_PLUGINS=nocommand",
        "twin": r"plugins 'core' and 'twin' both register the sampler 'uniform'",
        "shadow": r"core's option and shadow's shadow_conf sampler/uniform.yaml both offer sampler=uniform; rename "
        r"one, or set ENGAGE_DISABLE_PLUGINS to one of the plugins",
    }
    for name, source in sources.items():
        folder = tmp_path / name
        folder.mkdir()
        _install(folder, monkeypatch, name, source)
        if name == "shadow":  # a YAML config of the name of core's default sampler
            (folder / "shadow_conf" / "sampler").mkdir(parents=True)
            (folder / "shadow_conf" / "__init__.py").write_text("")
            (folder / "shadow_conf" / "sampler" / "uniform.yaml").write_text("seed: 12345\n")
        env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        command = ["plugins"] if name == "twin" else ["run", "--cfg", "job"]
        done = subprocess.run([sys.executable, "-m", "engage.core.cli", *command], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (name, done.stderr[-2000:])
        assert re.match(rf"engage( {command[0]})?: {expected[name]}", lines[0]), lines[0]
        made = {p.name for p in folder.iterdir()} - {"shadow_conf", "__pycache__"}
        assert made == {f"{name}_module.py", f"{name}_plugin-1.0.dist-info"}


def test_callbacks_a_plugin_returns_are_a_list_of_callbacks_or_its_plugin_is_named(monkeypatch):
    from lightning.pytorch.callbacks import Callback

    from engage.core import hookimpl, training

    class Good:
        @staticmethod
        @hookimpl
        def engage_callbacks(cfg):
            return [Callback()]

    class One:  # one callback, not a list of them
        @staticmethod
        @hookimpl
        def engage_callbacks(cfg):
            return Callback()

    class Dicts:
        @staticmethod
        @hookimpl
        def engage_callbacks(cfg):
            return [{"not": "a callback"}]

    monkeypatch.setattr(training, "get_plugin_manager", lambda: new_plugin_manager([("good", Good)], installed=False))
    assert [type(c) for c in training.plugin_callbacks(None)] == [Callback]
    for name, plugin, got in (("one", One, "Callback"), ("dicts", Dicts, "dict")):
        manager = new_plugin_manager([(name, plugin)], installed=False)
        monkeypatch.setattr(training, "get_plugin_manager", lambda manager=manager: manager)
        with pytest.raises(PluginError) as failure:
            training.plugin_callbacks(None)
        assert str(failure.value) == (
            f"plugin {name!r}: engage_callbacks must return a list of Lightning callbacks, got {got}; "
            f"fix it, or set {DISABLE_ENV}={name}"
        )
