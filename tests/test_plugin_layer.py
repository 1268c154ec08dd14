"""The plugin layer as pluggy keeps it: every hook documented and implemented in the product,
plugins loaded by pluggy's own loader with ``check_pending()``, failures named in one line."""

from __future__ import annotations

import inspect
import sys
import textwrap

import pytest

from engage.core import hookspecs
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
    with pytest.raises(PluginError, match=r"plugin 'typo' has a hook implementation that is no ENGAGE hook"):
        load_plugins(new_plugin_manager(installed=False))


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
